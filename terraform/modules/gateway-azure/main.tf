# strait's gateway on an existing AKS cluster: a Standard SKU static public IP that the gateway's
# QUIC Service takes on the cluster's Standard Load Balancer (a UDP and a TCP rule on one
# frontend, and a health probe), security rules that let only the peers reach the port, and the
# Helm release of the gateway.
#
# The load balancer is the cluster's own: an AKS node's network interface is already in the
# backend pool of the cluster's public load balancer, and Azure puts an interface in at most one
# public load balancer. A load balancer made here could never hold the nodes; the cluster's
# cloud controller, given this address, keeps its frontend, rules, probe and backends current as
# nodes come and go.

data "azurerm_kubernetes_cluster" "this" {
  name                = var.cluster_name
  resource_group_name = var.resource_group_name
}

locals {
  chart                    = var.chart != "" ? var.chart : "${path.module}/../../../deploy/helm/strait"
  name                     = "strait-${var.cluster_name}"
  public_ip_resource_group = var.public_ip_resource_group_name != "" ? var.public_ip_resource_group_name : data.azurerm_kubernetes_cluster.this.node_resource_group
  gateway_address          = "${azurerm_public_ip.gateway.ip_address}:${var.quic_port}"
}

resource "azurerm_public_ip" "gateway" {
  name                = local.name
  location            = data.azurerm_kubernetes_cluster.this.location
  resource_group_name = local.public_ip_resource_group
  allocation_method   = "Static"
  sku                 = "Standard"
  zones               = length(var.public_ip_zones) > 0 ? var.public_ip_zones : null
  tags                = var.tags
}

# The cluster's load balancer rules keep the frontend address on the packets (floating IP), so
# the security rules match the public IP and the QUIC port, from the peers only.
resource "azurerm_network_security_rule" "quic_from_peers" {
  name                        = "${local.name}-quic"
  description                 = "strait QUIC from the peer gateways of ${var.cluster_name}"
  resource_group_name         = var.network_security_group_resource_group_name
  network_security_group_name = var.network_security_group_name
  priority                    = var.security_rule_priority
  direction                   = "Inbound"
  access                      = "Allow"
  protocol                    = "Udp"
  source_address_prefixes     = var.peer_cidrs
  source_port_range           = "*"
  destination_address_prefix  = azurerm_public_ip.gateway.ip_address
  destination_port_range      = tostring(var.quic_port)
}

resource "azurerm_network_security_rule" "health_from_peers" {
  name                        = "${local.name}-health"
  description                 = "strait gateway readiness (TCP) from the peer gateways of ${var.cluster_name}"
  resource_group_name         = var.network_security_group_resource_group_name
  network_security_group_name = var.network_security_group_name
  priority                    = var.security_rule_priority + 1
  direction                   = "Inbound"
  access                      = "Allow"
  protocol                    = "Tcp"
  source_address_prefixes     = var.peer_cidrs
  source_port_range           = "*"
  destination_address_prefix  = azurerm_public_ip.gateway.ip_address
  destination_port_range      = tostring(var.quic_port)
}

resource "helm_release" "gateway" {
  name             = var.release_name
  chart            = local.chart
  namespace        = var.namespace
  create_namespace = var.create_namespace

  values = concat(var.values, [yamlencode({
    cluster           = var.cluster_name
    trustDomain       = var.trust_domain
    credentialsSecret = var.credentials_secret
    gateway = {
      advertiseAddress = local.gateway_address
      location = {
        cloud  = "azure"
        region = data.azurerm_kubernetes_cluster.this.location
      }
    }
    # A LoadBalancer Service on the reserved IP: the cluster's cloud controller puts a UDP and a
    # TCP rule on one frontend, probes kube-proxy's health node port (externalTrafficPolicy
    # Local: only the gateway's node answers), and limits its own security rules to the peers.
    quicService = {
      type                     = "LoadBalancer"
      cloud                    = "azure"
      port                     = var.quic_port
      tcpHealth                = true
      loadBalancerSourceRanges = var.peer_cidrs
      annotations = {
        "service.beta.kubernetes.io/azure-load-balancer-resource-group" = local.public_ip_resource_group
        "service.beta.kubernetes.io/azure-pip-name"                     = azurerm_public_ip.gateway.name
      }
    }
  })])
}
