output "links" {
  description = "The links made, as DIALER/ACCEPTOR (their live state: `strait get links`, or module.mesh.links)."
  value       = keys(module.mesh.links)
}
