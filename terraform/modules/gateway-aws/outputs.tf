output "gateway_address" {
  description = "The address peers dial (host:port): the first Elastic IP and the QUIC port. `strait link --address` takes it."
  value       = local.gateway_address
}

output "cluster_name" {
  description = "The cluster's name in the mesh (the EKS cluster's name)."
  value       = var.cluster_name
}

output "static_ips" {
  description = "The load balancer's Elastic IPs, one per public subnet, in the order of public_subnet_ids. Any of them reaches the gateway."
  value       = local.static_ips
}

output "load_balancer_arn" {
  description = "ARN of the Network Load Balancer."
  value       = aws_lb.gateway.arn
}

output "load_balancer_dns_name" {
  description = "DNS name of the Network Load Balancer; it resolves to the Elastic IPs."
  value       = aws_lb.gateway.dns_name
}

output "target_group_arn" {
  description = "ARN of the TCP_UDP target group (nodes at the node port); attach more node groups to it."
  value       = aws_lb_target_group.gateway.arn
}

output "node_port" {
  description = "The node port of the gateway's QUIC Service."
  value       = var.node_port
}

output "helm_release_name" {
  description = "Name of the gateway's Helm release."
  value       = helm_release.gateway.name
}
