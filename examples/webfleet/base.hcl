role "base" {
  user "ops" {
    groups          = ["adm"]
    authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExample ops@example"]
  }

  file "/etc/motd" {
    priority = "default"
    content  = "${host.name} (${join(", ", host.tags)}) is managed by deploy\n"
  }

  sysctl "net.core.somaxconn" {
    value = 4096
  }

  firewall {
    allow_ping = true
  }

  health_check "sshd" {
    unit = "ssh.service"
  }

  # Prometheus' node_exporter from its release archive, on every host:
  # unpacked into the store, pinned by its sha256 in deploy.lock.
  package "node_exporter" {
    url              = "https://github.com/prometheus/node_exporter/releases/download/v1.7.0/node_exporter-1.7.0.linux-amd64.tar.gz"
    unpack           = true
    strip_components = 1
  }

  user "node_exporter" {
    system = true
  }

  service "node_exporter" {
    description = "Prometheus node exporter"
    exec_start  = "${package.node_exporter}/node_exporter --web.listen-address=:9100"
    user        = "node_exporter"
    restart     = "always"
  }

  firewall {
    allowed_tcp_ports = [9100]
  }

  health_check "node_exporter" {
    address = "127.0.0.1:9100"
    timeout = "15s"
  }
}
