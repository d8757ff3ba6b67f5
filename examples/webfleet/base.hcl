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
}
