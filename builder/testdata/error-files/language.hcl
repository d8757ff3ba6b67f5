host "h1" {
  address = "10.0.0.1"
  roles   = [role.web, role.nope] # ERROR: Unsupported attribute
}

host "h2" {
  address = "10.0.0.2"
  role "web" {
    prot = 9090 # ERROR: Unsupported role argument
  }
}

host "h3" {
  address = "10.0.0.3"
  role "needs" { # ERROR: Missing role argument
  }
}

host "h4" {
  address = "10.0.0.4"
  role "wbe" { # ERROR: Unknown role
  }
}

host "h5" {
  address = "10.0.0.5"
  role "web" {
    port = "many" # ERROR: Invalid role argument
  }
}

host "h6" { # ERROR: Missing address
}

host "h7" {
  address = "10.0.0.7"
  service "envvar" {
    exec_start = env("HOME") # ERROR: Call to unknown function
  }
  service "unknown-package" {
    exec_start = "${package.nothere}/bin/x" # ERROR: Unsupported attribute
  }
  frobnicator "x" { # ERROR: Unsupported block type
  }
}

host "h1" { # ERROR: Duplicate host
  address = "10.0.0.9"
}

host "bad name" { # ERROR: Invalid host name
  address = "10.0.0.8"
}

role "web" {
  variable "port" {
    type    = number
    default = 8080
  }
  file "/etc/port" {
    content = "${var.port}"
  }
}

role "needs" {
  variable "value" {}
}

deployment "prod" {
  hosts = ["h1", "h9"] # ERROR: Unknown host
}

deployment "empty" { # ERROR: Deployment without hosts
}

deployment "badbatch" {
  hosts      = ["h1"]
  batch_size = "120%" # ERROR: Invalid batch_size
}

deployment "h2" { # ERROR: Ambiguous name
  hosts = ["h1"]
}

deployment "badtransport" {
  hosts     = ["h1"]
  transport = "carrier-pigeon" # ERROR: Invalid transport
}

deployment "tailnet" {
  hosts     = ["h1"]
  transport = "tailscale"
}

deployment "badboot" {
  hosts         = ["h1"]
  boot_attempts = 0 # ERROR: Invalid boot_attempts
  boot_timeout  = "soon" # ERROR: Invalid boot_timeout
}

host "h8" {
  address       = "10.0.0.8"
  boot_attempts = 2.5 # ERROR: Invalid boot_attempts
  boot_timeout  = "-1m" # ERROR: Invalid boot_timeout
}
