output "gateway_address" {
  description = "The address peers dial (host:port): the static public IP and the QUIC port. `strait link --address` takes it."
  value       = local.gateway_address
}

output "cluster_name" {
  description = "The cluster's name in the mesh (the AKS cluster's name)."
  value       = var.cluster_name
}

output "public_ip_address" {
  description = "The Standard SKU static public IP that the cluster's load balancer puts the gateway on."
  value       = azurerm_public_ip.gateway.ip_address
}

output "public_ip_id" {
  description = "ID of the public IP resource."
  value       = azurerm_public_ip.gateway.id
}

output "helm_release_name" {
  description = "Name of the gateway's Helm release."
  value       = helm_release.gateway.name
}
