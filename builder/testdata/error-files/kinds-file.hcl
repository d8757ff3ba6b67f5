host "h1" {
  address = "10.0.0.1"
  file "etc/relative" { # ERROR: Invalid path
    content = "x"
  }
  file "/etc/both" { # ERROR: Invalid file content
    content = "x"
    source  = "x"
  }
  file "/etc/neither" { # ERROR: Invalid file content
    mode = "0644"
  }
  file "/etc/mode" {
    content = "x"
    mode    = "0999" # ERROR: Invalid mode
  }
  file "/etc/owner" {
    content = "x"
    owner   = "Bad User" # ERROR: Invalid user name
  }
  file "/etc/unknown" {
    content = "x"
    colour  = "red" # ERROR: Unsupported argument
  }
  file "/etc/outside" {
    source = "../../../etc/passwd" # ERROR: Cannot read source
  }
  file "/etc/abs" {
    content = file("/etc/passwd") # ERROR: Invalid function argument
  }
  file "/etc/missing" {
    source = "no-such-file" # ERROR: Cannot read source
  }
  directory "/var/lib/x" {
    mode = "rwx" # ERROR: Invalid mode
  }
  symlink "/usr/local/bin/x" {
    target = "" # ERROR: Invalid symlink target
  }
  file "/etc/motd" {
    content = "x"
  }
  directory "/etc/motd" { # ERROR: Path defined twice
  }
  file "/etc/issue" {
    content = "x"
  }
  file "/etc/issue/inner" { # ERROR: Path inside a non-directory
    content = "x"
  }
}
host "h2" {
  address = "10.0.0.2"
  file "/etc/json-mode" {
    content = "x"
    mode    = 420 # ERROR: Mode is a number
  }
  directory "/var/lib/octal-digits" {
    mode = 755 # ERROR: Mode is a number
  }
  secret "s" {
    source = "secrets/s.txt"
    mode   = 256 # ERROR: Mode is a number
  }
}
