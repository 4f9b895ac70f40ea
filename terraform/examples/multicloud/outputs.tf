output "gateway_addresses" {
  description = "The address each cluster's peers dial, by cluster name."
  value = {
    (module.aws.cluster_name)   = module.aws.gateway_address
    (module.gcp.cluster_name)   = module.gcp.gateway_address
    (module.azure.cluster_name) = module.azure.gateway_address
  }
}

output "cluster_names" {
  description = "The clusters' names in the mesh."
  value       = [module.aws.cluster_name, module.gcp.cluster_name, module.azure.cluster_name]
}
