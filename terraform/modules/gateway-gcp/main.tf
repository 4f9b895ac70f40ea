# strait's gateway on an existing GKE cluster: a regional static address with a UDP and a TCP
# forwarding rule of a passthrough network load balancer, whose backends are the node pools'
# instance groups, firewall rules that let only the peers (and Google's health checkers) reach
# the port, and the Helm release of the gateway.

data "google_container_cluster" "this" {
  name     = var.cluster_name
  location = var.location
  project  = var.project
}

locals {
  chart = var.chart != "" ? var.chart : "${path.module}/../../../deploy/helm/strait"
  # Regions are two words (europe-west1), zones three (europe-west1-b).
  region          = join("-", slice(split("-", var.location), 0, 2))
  name            = "strait-${var.cluster_name}"
  instance_groups = length(var.instance_group_urls) > 0 ? var.instance_group_urls : flatten(data.google_container_cluster.this.node_pool[*].managed_instance_group_urls)
  gateway_address = "${google_compute_address.gateway.address}:${var.quic_port}"
  # Where the health checks of passthrough network load balancers come from.
  health_check_ranges = ["35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22"]
}

resource "google_compute_address" "gateway" {
  name         = local.name
  project      = var.project
  region       = local.region
  address_type = "EXTERNAL"
  network_tier = "PREMIUM"
  labels       = var.labels
}

# The checkers send to the forwarding rules' address on the QUIC port over TCP, which the
# Service's externalIPs carry to the gateway's readiness: UDP can not be health-checked.
resource "google_compute_region_health_check" "gateway" {
  name                = local.name
  project             = var.project
  region              = local.region
  check_interval_sec  = 5
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 2

  http_health_check {
    port         = var.quic_port
    request_path = "/readyz"
  }
}

# A forwarding rule sends to a backend service of its own protocol: one of each.
resource "google_compute_region_backend_service" "udp" {
  name                  = "${local.name}-udp"
  project               = var.project
  region                = local.region
  protocol              = "UDP"
  load_balancing_scheme = "EXTERNAL"
  health_checks         = [google_compute_region_health_check.gateway.id]

  dynamic "backend" {
    for_each = local.instance_groups
    content {
      group          = backend.value
      balancing_mode = "CONNECTION"
    }
  }
}

resource "google_compute_region_backend_service" "tcp" {
  name                  = "${local.name}-tcp"
  project               = var.project
  region                = local.region
  protocol              = "TCP"
  load_balancing_scheme = "EXTERNAL"
  health_checks         = [google_compute_region_health_check.gateway.id]

  dynamic "backend" {
    for_each = local.instance_groups
    content {
      group          = backend.value
      balancing_mode = "CONNECTION"
    }
  }
}

resource "google_compute_forwarding_rule" "udp" {
  name                  = "${local.name}-udp"
  project               = var.project
  region                = local.region
  ip_address            = google_compute_address.gateway.address
  ip_protocol           = "UDP"
  ports                 = [tostring(var.quic_port)]
  load_balancing_scheme = "EXTERNAL"
  network_tier          = "PREMIUM"
  backend_service       = google_compute_region_backend_service.udp.id
  labels                = var.labels
}

resource "google_compute_forwarding_rule" "tcp" {
  name                  = "${local.name}-tcp"
  project               = var.project
  region                = local.region
  ip_address            = google_compute_address.gateway.address
  ip_protocol           = "TCP"
  ports                 = [tostring(var.quic_port)]
  load_balancing_scheme = "EXTERNAL"
  network_tier          = "PREMIUM"
  backend_service       = google_compute_region_backend_service.tcp.id
  labels                = var.labels
}

# A passthrough load balancer keeps both ends of a packet: the rules see the peers' addresses.
resource "google_compute_firewall" "peers" {
  name          = "${local.name}-peers"
  project       = var.project
  network       = data.google_container_cluster.this.network
  description   = "strait QUIC (UDP) and gateway readiness (TCP) from the peer gateways of ${var.cluster_name}"
  direction     = "INGRESS"
  source_ranges = var.peer_cidrs
  target_tags   = var.node_tags

  allow {
    protocol = "udp"
    ports    = [tostring(var.quic_port)]
  }

  allow {
    protocol = "tcp"
    ports    = [tostring(var.quic_port)]
  }
}

resource "google_compute_firewall" "health_checks" {
  name          = "${local.name}-health-checks"
  project       = var.project
  network       = data.google_container_cluster.this.network
  description   = "strait gateway readiness (TCP) from the load balancer's health checks"
  direction     = "INGRESS"
  source_ranges = local.health_check_ranges
  target_tags   = var.node_tags

  allow {
    protocol = "tcp"
    ports    = [tostring(var.quic_port)]
  }
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
        cloud  = "gcp"
        region = local.region
      }
    }
    # The load balancer delivers packets still addressed to itself: kube-proxy takes them for
    # the Service through its externalIPs, which no node port could.
    quicService = {
      type        = "ClusterIP"
      port        = var.quic_port
      externalIPs = [google_compute_address.gateway.address]
      tcpHealth   = true
    }
  })])
}
