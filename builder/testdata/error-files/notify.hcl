notify "chat" {
  url    = "ftp://example.com/hook" # ERROR: Invalid notify url
  format = "xml" # ERROR: Invalid notify format
  on     = ["start", "finish"] # ERROR: Invalid notify on
}

notify "chat" { # ERROR: Duplicate notify
  url = "https://example.com/hook"
}

host "h1" {
  address = "10.0.0.1"
}
