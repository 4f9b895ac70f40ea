variable "cluster_name" {
  description = "Name of the existing AKS cluster. It is also the cluster's name in the mesh (Helm value `cluster`), so it must be a DNS label."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must be a DNS label: lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit."
  }
}

variable "resource_group_name" {
  description = "Resource group of the AKS cluster."
  type        = string

  validation {
    condition     = can(regex("^[-\\w._()]{1,90}$", var.resource_group_name)) && !can(regex("\\.$", var.resource_group_name))
    error_message = "The resource_group_name must be a resource group name: 1 to 90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'."
  }
}

variable "public_ip_resource_group_name" {
  description = "Resource group of the gateway's public IP. Empty: the cluster's node resource group, where the cluster may use it without more rights; elsewhere, grant the cluster's identity Network Contributor on that group."
  type        = string
  default     = ""

  validation {
    condition     = var.public_ip_resource_group_name == "" || (can(regex("^[-\\w._()]{1,90}$", var.public_ip_resource_group_name)) && !can(regex("\\.$", var.public_ip_resource_group_name)))
    error_message = "The public_ip_resource_group_name must be empty or a resource group name."
  }
}

variable "public_ip_zones" {
  description = "Availability zones of the public IP (for example [\"1\", \"2\", \"3\"] for a zone-redundant address). Empty: none given, as regions without zones need."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for zone in var.public_ip_zones : contains(["1", "2", "3"], zone)])
    error_message = "The public_ip_zones may hold only \"1\", \"2\" and \"3\"."
  }
}

variable "network_security_group_name" {
  description = "Network security group, on the nodes' subnet or network interfaces, that gets the rules letting the peers in."
  type        = string

  validation {
    condition     = can(regex("^[-\\w._]{1,80}$", var.network_security_group_name))
    error_message = "The network_security_group_name must be a network security group name (1 to 80 letters, digits, '_', '-' or '.')."
  }
}

variable "network_security_group_resource_group_name" {
  description = "Resource group of the network security group."
  type        = string

  validation {
    condition     = can(regex("^[-\\w._()]{1,90}$", var.network_security_group_resource_group_name)) && !can(regex("\\.$", var.network_security_group_resource_group_name))
    error_message = "The network_security_group_resource_group_name must be a resource group name."
  }
}

variable "security_rule_priority" {
  description = "Priority of the first of the two security rules (UDP); the TCP rule takes the next one. Lower than any rule that denies the port."
  type        = number
  default     = 400

  validation {
    condition     = var.security_rule_priority >= 100 && var.security_rule_priority <= 4095 && floor(var.security_rule_priority) == var.security_rule_priority
    error_message = "The security_rule_priority must be 100 to 4095 (the TCP rule takes the next one)."
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

variable "tags" {
  description = "Tags added to the Azure resources."
  type        = map(string)
  default     = {}
}
