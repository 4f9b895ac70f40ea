variable "cluster_name" {
  description = "Name of the existing EKS cluster. It is also the cluster's name in the mesh (Helm value `cluster`), so it must be a DNS label."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must be a DNS label: lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit."
  }
}

variable "public_subnet_ids" {
  description = "Public subnets of the cluster's VPC, at most one per availability zone, where the Network Load Balancer lives. Each gets an Elastic IP; peers dial the first one's."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) > 0 && alltrue([for id in var.public_subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "The public_subnet_ids must hold at least one subnet ID (subnet-...)."
  }
}

variable "node_autoscaling_group_names" {
  description = "Auto Scaling groups of the cluster's nodes (for a managed node group: `resources[0].autoscaling_groups[*].name`). Their instances become the load balancer's targets."
  type        = list(string)

  validation {
    condition     = length(var.node_autoscaling_group_names) > 0 && alltrue([for name in var.node_autoscaling_group_names : length(name) > 0])
    error_message = "The node_autoscaling_group_names must hold at least one Auto Scaling group name."
  }
}

variable "node_security_group_id" {
  description = "Security group of the cluster's nodes that gets the rules letting the peers in. Empty: the cluster security group that EKS gives managed node groups."
  type        = string
  default     = ""

  validation {
    condition     = var.node_security_group_id == "" || can(regex("^sg-[0-9a-f]+$", var.node_security_group_id))
    error_message = "The node_security_group_id must be empty or a security group ID (sg-...)."
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

variable "node_port" {
  description = "Node port of the gateway's QUIC Service (UDP, and TCP to its readiness): the load balancer's target port. Must be free in the cluster."
  type        = number
  default     = 31443

  validation {
    condition     = var.node_port >= 30000 && var.node_port <= 32767 && floor(var.node_port) == var.node_port
    error_message = "The node_port must be in Kubernetes' default node port range, 30000 to 32767."
  }
}

variable "deletion_protection" {
  description = "Protect the Network Load Balancer from deletion; set to false before destroying the module."
  type        = bool
  default     = true
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

variable "tags" {
  description = "Tags added to the AWS resources."
  type        = map(string)
  default     = {}
}
