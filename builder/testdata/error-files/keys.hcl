# Keys that look right at a glance and do not parse: each is a configuration
# error at its line, not a failure at the first connection or encryption.

admin "alice" {
  keys = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDaZ8DKIOPKQN0NxiOMwlXXS6+72H+fxzYWgyyiuVtJn alice@laptop",
    "age1notarecipient", # ERROR: Invalid admin key
    "ssh-ed25519 AAAAC3Nza", # ERROR: Invalid admin key
  ]
}

host "truncated" {
  address  = "10.0.0.1"
  host_key = "ssh-ed25519 AAAAC3Nza" # ERROR: Invalid host_key
}

host "mistyped" {
  address  = "10.0.0.2"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDaZ8DKIOPKQN0NxiOMwlXXS6+72H+fxzYWgyyiu!tJn" # ERROR: Invalid host_key
}

host "ok" {
  address  = "10.0.0.3"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDaZ8DKIOPKQN0NxiOMwlXXS6+72H+fxzYWgyyiuVtJn"
}
