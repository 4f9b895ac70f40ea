variable "trust_domain" {
  description = "The mesh's trust domain, as `strait trust init` made it."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9._-]{1,255}$", var.trust_domain))
    error_message = "The trust_domain must be a SPIFFE trust domain: lower-case letters, digits, '.', '-' and '_'."
  }
}

variable "strait_config_path" {
  description = "The strait contexts file, holding a context per cluster named after it (`strait context add`). Null: $STRAIT_CONFIG, then ~/.strait/config."
  type        = string
  default     = null
}

# AWS

variable "aws_region" {
  description = "Region of the EKS cluster."
  type        = string
}

variable "aws_cluster_name" {
  description = "Name of the EKS cluster (a DNS label: it is the cluster's name in the mesh)."
  type        = string
}

variable "aws_public_subnet_ids" {
  description = "Public subnets of the EKS cluster's VPC, one per zone, for the Network Load Balancer."
  type        = list(string)
}

variable "aws_node_autoscaling_group_names" {
  description = "Auto Scaling groups of the EKS cluster's nodes."
  type        = list(string)
}

variable "aws_egress_cidrs" {
  description = "Addresses the EKS cluster's gateway dials the other clusters from (its NAT gateways' Elastic IPs, as /32)."
  type        = list(string)
}

# Google Cloud

variable "gcp_project" {
  description = "Project of the GKE cluster."
  type        = string
}

variable "gcp_location" {
  description = "Location (region or zone) of the GKE cluster."
  type        = string
}

variable "gcp_cluster_name" {
  description = "Name of the GKE cluster (a DNS label: it is the cluster's name in the mesh)."
  type        = string
}

variable "gcp_node_tags" {
  description = "Network tags of the GKE cluster's nodes (gke-<cluster>-<hash>-node)."
  type        = list(string)
}

variable "gcp_egress_cidrs" {
  description = "Addresses the GKE cluster's gateway dials the other clusters from (its Cloud NAT addresses, or its nodes' external addresses, as /32)."
  type        = list(string)
}

# Azure

variable "azure_subscription_id" {
  description = "Subscription of the AKS cluster."
  type        = string
}

variable "azure_resource_group_name" {
  description = "Resource group of the AKS cluster."
  type        = string
}

variable "azure_cluster_name" {
  description = "Name of the AKS cluster (a DNS label: it is the cluster's name in the mesh)."
  type        = string
}

variable "azure_network_security_group_name" {
  description = "Network security group of the AKS nodes' subnet."
  type        = string
}

variable "azure_network_security_group_resource_group_name" {
  description = "Resource group of that network security group."
  type        = string
}

variable "azure_egress_cidrs" {
  description = "Addresses the AKS cluster's gateway dials the other clusters from (the cluster's outbound IPs, as /32)."
  type        = list(string)
}
