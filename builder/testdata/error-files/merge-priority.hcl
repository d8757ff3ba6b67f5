# Priorities decide: no errors except the invalid priority and the tie
# between two forced definitions.
host "h1" {
  address = "10.0.0.1"
  roles   = [role.a]
  file "/etc/motd" {
    priority = "force"
    content  = "host wins"
  }
  file "/etc/issue" {
    content = "host wins too"
  }
  file "/etc/x" {
    priority = "force"
    content  = "one"
  }
  file "/etc/y" {
    priority = "sometimes" # ERROR: Invalid priority
    content  = "y"
  }
}

role "a" {
  file "/etc/motd" {
    content = "role"
  }
  file "/etc/issue" {
    priority = "default"
    content  = "role default"
  }
  file "/etc/x" {
    priority = "force"
    content  = "two" # ERROR: Conflicting definitions of file "/etc/x"
  }
}
