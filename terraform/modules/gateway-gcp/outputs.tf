output "gateway_address" {
  description = "The address peers dial (host:port): the static address and the QUIC port. `strait link --address` takes it."
  value       = local.gateway_address
}

output "cluster_name" {
  description = "The cluster's name in the mesh (the GKE cluster's name)."
  value       = var.cluster_name
}

output "static_ip" {
  description = "The regional static address both forwarding rules share."
  value       = google_compute_address.gateway.address
}

output "forwarding_rule_ids" {
  description = "IDs of the UDP and TCP forwarding rules."
  value = {
    udp = google_compute_forwarding_rule.udp.id
    tcp = google_compute_forwarding_rule.tcp.id
  }
}

output "helm_release_name" {
  description = "Name of the gateway's Helm release."
  value       = helm_release.gateway.name
}
