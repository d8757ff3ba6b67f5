host "h1" {
  address = "10.0.0.1"
  user "Root" { # ERROR: Invalid user name
  }
  user "alice" {
    uid = 70000 # ERROR: Invalid uid
  }
  user "bob" {
    home = "home/bob" # ERROR: Invalid home
  }
  user "carol" {
    authorized_keys = ["not-a-key"] # ERROR: Invalid authorized key
  }
  user "dave" {
    groups = ["Wheel"] # ERROR: Invalid group name
  }
  group "ops" {
    gid = -1 # ERROR: Invalid gid
  }
  group "dev" {
    members = "alice" # ERROR: Incorrect attribute value type
  }
}
