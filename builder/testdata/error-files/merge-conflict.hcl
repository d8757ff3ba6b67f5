host "h1" {
  address = "10.0.0.1"
  roles   = [role.a, role.b]
}

role "a" {
  file "/etc/motd" {
    content = "from a"
  }
  user "alice" {
    shell  = "/bin/bash"
    groups = ["wheel"]
  }
  service "s" {
    exec_start  = "/bin/true"
    environment = { A = "1", SHARED = "x" }
  }
}

role "b" {
  file "/etc/motd" {
    content = "from b" # ERROR: Conflicting definitions of file "/etc/motd"
  }
  user "alice" {
    shell  = "/bin/zsh" # ERROR: Conflicting definitions of user "alice"
    groups = ["docker"]
  }
  service "s" {
    environment = { B = "2", SHARED = "y" } # ERROR: Conflicting definitions of service "s"
  }
}
