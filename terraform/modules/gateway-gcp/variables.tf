variable "cluster_name" {
  description = "Name of the existing GKE cluster. It is also the cluster's name in the mesh (Helm value `cluster`), so it must be a DNS label."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must be a DNS label: lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit."
  }
}

variable "location" {
  description = "Location of the GKE cluster: a region (regional cluster) or a zone (zonal cluster). The load balancer lives in its region."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+(-[a-z])?$", var.location))
    error_message = "The location must be a region (europe-west1) or a zone (europe-west1-b)."
  }
}

variable "project" {
  description = "Project of the cluster and of the resources made here. Null: the provider's project."
  type        = string
  default     = null

  validation {
    condition     = var.project == null || can(regex("^[a-z][-a-z0-9]{4,28}[a-z0-9]$", var.project))
    error_message = "The project must be a project ID (6 to 30 lower-case letters, digits and '-')."
  }
}

variable "node_tags" {
  description = "Network tags of the cluster's nodes, the targets of the firewall rules: the `gke-<cluster>-<hash>-node` tag GKE gives every node, or tags of the node pools' node_config."
  type        = list(string)

  validation {
    condition     = length(var.node_tags) > 0 && alltrue([for tag in var.node_tags : can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", tag))])
    error_message = "The node_tags must hold at least one network tag (lower-case letters, digits and '-', starting with a letter)."
  }
}

variable "instance_group_urls" {
  description = "Instance groups (.../instanceGroups/...) of the nodes the load balancer sends to. Empty: those of every node pool of the cluster."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for url in var.instance_group_urls : can(regex("/instanceGroups/[^/]+$", url))])
    error_message = "The instance_group_urls must be instance group URLs (ending in /instanceGroups/NAME), not instance group manager URLs."
  }
}

variable "peer_cidrs" {
  description = "IPv4 CIDRs that the peer clusters' gateways dial from (their egress or NAT addresses, often /32). Only they reach the gateway's port."
  type        = list(string)

  validation {
    condition = length(var.peer_cidrs) > 0 && alltrue([
      for cidr in var.peer_cidrs : try(cidrsubnet(cidr, 0, 0) == cidr && can(cidrnetmask(cidr)) && tonumber(split("/", cidr)[1]) > 0, false)
    ])
    error_message = "The peer_cidrs must hold at least one IPv4 CIDR in canonical form (network address, e.g. 203.0.113.7/32); 0.0.0.0/0 is refused: the port is for the peers only."
  }
}

variable "trust_domain" {
  description = "The mesh's trust domain, as `strait trust init` made it (Helm value `trustDomain`)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9._-]{1,255}$", var.trust_domain))
    error_message = "The trust_domain must be a SPIFFE trust domain: lower-case letters, digits, '.', '-' and '_'."
  }
}

variable "quic_port" {
  description = "UDP port (and TCP, for health) that peers dial on the load balancer."
  type        = number
  default     = 4433

  validation {
    condition     = var.quic_port >= 1 && var.quic_port <= 65535 && floor(var.quic_port) == var.quic_port
    error_message = "The quic_port must be a port number, 1 to 65535."
  }
}

variable "namespace" {
  description = "Namespace of the Helm release. It must hold the credentials Secret before the gateway can start."
  type        = string
  default     = "strait-system"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "The namespace must be a DNS label."
  }
}

variable "create_namespace" {
  description = "Let Helm create the namespace. The credentials Secret must still be created in it before the gateway starts."
  type        = bool
  default     = false
}

variable "release_name" {
  description = "Name of the Helm release."
  type        = string
  default     = "strait"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$", var.release_name))
    error_message = "The release_name must be a DNS label of at most 53 characters."
  }
}

variable "chart" {
  description = "The strait Helm chart: a path or a chart reference. Empty: the chart of this repository (deploy/helm/strait)."
  type        = string
  default     = ""
}

variable "credentials_secret" {
  description = "Secret, in the namespace, holding the cluster's credentials as `strait trust issue` writes them (Helm value `credentialsSecret`). Made outside Terraform, so the issuer's key stays out of the state."
  type        = string
  default     = "strait-cluster-credentials"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.credentials_secret))
    error_message = "The credentials_secret must be a Kubernetes object name (DNS subdomain)."
  }
}

variable "values" {
  description = "More Helm values (YAML documents), applied before the module's own; the module's wiring of the QUIC Service and advertised address wins."
  type        = list(string)
  default     = []
}

variable "labels" {
  description = "Labels added to the Google Cloud resources that take them."
  type        = map(string)
  default     = {}
}
