# strait's gateway on an existing EKS cluster: Elastic IPs on a Network Load Balancer whose
# TCP_UDP listener carries QUIC to the gateway through a fixed node port, security group rules
# that let only the peers reach that port, and the Helm release of the gateway.

data "aws_region" "current" {}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

# The load balancer's health checks come from its own private addresses in these subnets.
data "aws_subnet" "public" {
  for_each = toset(var.public_subnet_ids)
  id       = each.value
}

locals {
  chart = var.chart != "" ? var.chart : "${path.module}/../../../deploy/helm/strait"
  # Load balancer and target group names: at most 32 characters, no trailing '-'.
  name                   = replace(substr("strait-${var.cluster_name}", 0, 32), "/-+$/", "")
  node_security_group_id = var.node_security_group_id != "" ? var.node_security_group_id : data.aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
  health_check_cidrs     = sort([for subnet in data.aws_subnet.public : subnet.cidr_block])
  static_ips             = [for id in var.public_subnet_ids : aws_eip.gateway[id].public_ip]
  gateway_address        = "${local.static_ips[0]}:${var.quic_port}"
}

resource "aws_eip" "gateway" {
  #checkov:skip=CKV2_AWS_19:The Elastic IPs belong to the Network Load Balancer (its subnet_mapping), not to EC2 instances.
  for_each = toset(var.public_subnet_ids)

  domain = "vpc"
  tags   = merge(var.tags, { Name = "${local.name}-${each.value}" })
}

resource "aws_lb" "gateway" {
  #checkov:skip=CKV_AWS_91:A Network Load Balancer writes access logs for TLS listeners only; this one carries QUIC over UDP, which the gateway's own peer metrics account for.
  name               = local.name
  load_balancer_type = "network"
  internal           = false
  # Any of the Elastic IPs reaches the gateway, whichever zone its pod runs in.
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection

  dynamic "subnet_mapping" {
    for_each = var.public_subnet_ids
    content {
      subnet_id     = subnet_mapping.value
      allocation_id = aws_eip.gateway[subnet_mapping.value].id
    }
  }

  tags = var.tags
}

# Instance targets at the node port: the NLB rewrites the destination to the node and keeps the
# peer's source address, and kube-proxy forwards to the gateway pod wherever it runs.
resource "aws_lb_target_group" "gateway" {
  name                 = local.name
  port                 = var.node_port
  protocol             = "TCP_UDP"
  target_type          = "instance"
  vpc_id               = data.aws_eks_cluster.this.vpc_config[0].vpc_id
  deregistration_delay = 30

  # UDP can not be health-checked: the same node port carries TCP to the gateway's readiness.
  health_check {
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/readyz"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = var.tags
}

resource "aws_lb_listener" "quic" {
  load_balancer_arn = aws_lb.gateway.arn
  port              = var.quic_port
  protocol          = "TCP_UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }

  tags = var.tags
}

# The node groups' instances, present and future, register as targets.
resource "aws_autoscaling_attachment" "nodes" {
  #checkov:skip=CKV2_AWS_15:The node groups are the cluster's, not this module's; ELB health checks would have them replace every node whenever the gateway is not ready.
  for_each = toset(var.node_autoscaling_group_names)

  autoscaling_group_name = each.value
  lb_target_group_arn    = aws_lb_target_group.gateway.arn
}

resource "aws_security_group_rule" "quic_from_peers" {
  description       = "strait QUIC from the peer gateways of ${var.cluster_name}"
  type              = "ingress"
  security_group_id = local.node_security_group_id
  protocol          = "udp"
  from_port         = var.node_port
  to_port           = var.node_port
  cidr_blocks       = var.peer_cidrs
}

resource "aws_security_group_rule" "health_from_peers" {
  description       = "strait gateway readiness (TCP) from the peer gateways of ${var.cluster_name}"
  type              = "ingress"
  security_group_id = local.node_security_group_id
  protocol          = "tcp"
  from_port         = var.node_port
  to_port           = var.node_port
  cidr_blocks       = var.peer_cidrs
}

resource "aws_security_group_rule" "health_from_load_balancer" {
  description       = "strait gateway readiness (TCP) from the load balancer health checks"
  type              = "ingress"
  security_group_id = local.node_security_group_id
  protocol          = "tcp"
  from_port         = var.node_port
  to_port           = var.node_port
  cidr_blocks       = local.health_check_cidrs
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
        cloud  = "aws"
        region = data.aws_region.current.name
      }
    }
    # A NodePort Service at a fixed port is the NLB's target; the chart's LoadBalancer type would
    # make a second load balancer, without these addresses.
    quicService = {
      type      = "NodePort"
      port      = var.quic_port
      nodePort  = var.node_port
      tcpHealth = true
    }
  })])
}
