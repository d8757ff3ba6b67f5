# role "web": the hello service, its configuration, account, secret and
# health check. Applied by the hosts in fleet.hcl.
role "web" {
  variable "port" {
    type    = number
    default = 8080
  }
  variable "greeting" {
    type    = string
    default = "hello"
  }

  package "hello" {
    go { src = "./hello" }
  }

  user "hello" {
    system = true
  }

  file "/etc/hello/config.json" {
    content = templatefile("hello.json.tpl", {
      port     = var.port
      greeting = var.greeting
      host     = host.name
    })
    owner = "root"
    group = "hello"
    mode  = "0640"
  }

  secret "api-token" {
    source = "secrets/api-token.age"
    owner  = "hello"
    mode   = "0400"
  }

  service "hello" {
    description = "hello HTTP service"
    exec_start  = "${package.hello}/bin/hello -config /etc/hello/config.json"
    user        = "hello"
    environment = { API_TOKEN_FILE = secret.api-token.path }
    restart     = "always"
    after       = ["network-online.target"]
    wants       = ["network-online.target"]
    # Restart when the configuration file changes, not only the unit.
    restart_triggers = [templatefile("hello.json.tpl", {
      port     = var.port
      greeting = var.greeting
      host     = host.name
    })]
  }

  firewall {
    allowed_tcp_ports = [var.port]
  }

  health_check "hello-http" {
    url     = "http://127.0.0.1:${var.port}/healthz"
    timeout = "20s"
  }

  health_check "hello-unit" {
    unit = "hello.service"
  }
}
