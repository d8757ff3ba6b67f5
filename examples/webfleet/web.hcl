role "web" {
  variable "port" {
    type    = number
    default = 8000
  }
  variable "workers" {
    type    = number
    default = 2
  }

  package "site" {
    path = "./site"
  }

  user "ops" {
    groups = ["www-data"]
  }

  user "web" {
    system = true
  }

  file "/etc/web/web.env" {
    content = join("\n", [
      "PORT=${var.port}",
      "WORKERS=${var.workers}",
      "WEIGHT=${lookup(host.meta, "weight", "1")}",
    ])
  }

  service "web" {
    description       = "static site"
    exec_start        = "/usr/bin/python3 -m http.server ${var.port} --directory ${package.site}"
    user              = "web"
    environment_files = ["/etc/web/web.env"]
    restart           = "always"
    restart_triggers  = [var.workers]
    unit {
      Service = { NoNewPrivileges = true, ProtectSystem = "strict" }
    }
  }

  firewall {
    allowed_tcp_ports = [var.port]
  }

  health_check "web-http" {
    url     = "http://127.0.0.1:${var.port}/"
    timeout = "15s"
  }
}
