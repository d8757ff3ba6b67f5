# The fleet the pipeline deploys: `deploy check .` on every pull request,
# `deploy .#prod --json` on merge (see README.md and .github/workflows/).

deployment "prod" {
  hosts           = ["app1", "app2", "app3"]
  batch_size      = "50%"     # canary first, then half of the rest at a time
  max_failures    = 0
  rollback        = "all"     # a failure returns every host switched in this run
  confirm_timeout = "60s"
}

defaults {
  ssh_user = "deploy"
  sudo     = true
}

role "app" {
  variable "release" {
    default = "2026.11.1"
  }

  file "/etc/app/release" {
    content = "${var.release}\n"
  }

  service "app" {
    description      = "the application (a stand-in: a real fleet ships a package)"
    exec_start       = "/bin/sleep infinity"
    restart_triggers = [var.release]
  }

  health_check "app-active" {
    unit = "app.service"
  }
}

# Pin every host's key (deploy keyscan HOST prints it): CI never trusts on first use.
# These hosts are placeholders for your own.
host "app1" {
  address  = "app1.internal.example"
  # host_key = "ssh-ed25519 AAAA..."
  roles   = [role.app]
}

host "app2" {
  address = "app2.internal.example"
  roles   = [role.app]
}

host "app3" {
  address = "app3.internal.example"
  roles   = [role.app]
}
