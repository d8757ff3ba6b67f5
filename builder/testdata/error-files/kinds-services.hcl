host "h1" {
  address = "10.0.0.1"
  service "nocmd" { # ERROR: Missing exec_start
  }
  service "bad-restart" {
    exec_start = "/bin/true"
    restart    = "sometimes" # ERROR: Invalid restart
  }
  service "bad-type" {
    exec_start = "/bin/true"
    type       = "daemon" # ERROR: Invalid service type
  }
  service "x.service" { # ERROR: Invalid service name
    exec_start = "/bin/true"
  }
  service "env" {
    exec_start  = "/bin/true"
    environment = { "A B" = "1" } # ERROR: Invalid environment variable
  }
  service "raw" {
    exec_start = "/bin/true"
    unit { # ERROR: Invalid unit section
      Service = "not a section"
    }
  }
  service "raw-ok" {
    unit {
      Service = { ExecStart = "/bin/true", LimitNOFILE = 65536 }
    }
  }
  service "two-units" {
    exec_start = "/bin/true"
    unit {
    }
    unit { # ERROR: Duplicate unit block
    }
  }
  timer "never" { # ERROR: Timer never fires
  }
  timer "ok" {
    on_calendar = ["daily"]
  }
  package "image-pinned" {
    oci {
      image = "registry.example.com/library/nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    }
  }
  service "in-image" {
    root = package.image-pinned
  }
  service "bad-root" {
    root = "relative/path" # ERROR: Invalid root
  }
  service "bad-bind" {
    root = package.image-pinned
    bind = ["relative:/x"] # ERROR: Invalid bind
  }
  service "bad-state" {
    exec_start      = "/bin/true"
    state_directory = ["/abs"] # ERROR: Invalid state_directory
  }
  service "not-an-image" {
    root = "/usr" # ERROR: Invalid root
  }
}
