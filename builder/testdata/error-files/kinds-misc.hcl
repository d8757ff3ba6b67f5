host "h1" {
  address  = "10.0.0.1"
  hostname = "not_valid!" # ERROR: Invalid hostname
  timezone = "../etc/passwd" # ERROR: Invalid timezone
  sysctl "net/ipv4/ip_forward" { # ERROR: Invalid sysctl key
    value = 1
  }
  sysctl "net.ipv4.ip_forward" {
    value = ["1"] # ERROR: Invalid sysctl value
  }
  firewall {
    allowed_tcp_ports = [80, 70000] # ERROR: Invalid port
    extra_input_rules = ["accept; drop"] # ERROR: Invalid firewall rule
  }
  health_check "none" { # ERROR: Invalid health check
  }
  health_check "two" { # ERROR: Invalid health check
    url     = "http://localhost/"
    address = "localhost:80"
  }
  health_check "badurl" {
    url = "localhost:80" # ERROR: Invalid url
  }
  health_check "badtimeout" {
    address = "localhost:80"
    timeout = "soon" # ERROR: Invalid duration
  }
  health_check "badtype" {
    type    = "ping" # ERROR: Invalid health check type
    address = "localhost:80"
  }
  activation_script "both" { # ERROR: Invalid activation script
    script = "true"
    source = "x.sh"
  }
  activation_script "self" {
    script = "true"
    after  = ["self"] # ERROR: Invalid after
  }
  activation_script "orphan" {
    script = "true"
    after  = ["missing"] # ERROR: Unknown activation script
  }
  secret "s" {
    source = "secrets/s.txt" # ERROR: Invalid secret source
  }
  secret "missing" {
    source = "secrets/missing.age" # ERROR: Cannot read source
  }
}
host "h-attempt" {
  address = "10.0.0.9"
  health_check "slow" {
    command         = ["/bin/true"]
    timeout         = "5s"
    attempt_timeout = "10s" # ERROR: Invalid attempt_timeout
  }
  health_check "bad" {
    command         = ["/bin/true"]
    attempt_timeout = "soon" # ERROR: Invalid duration
  }
}
