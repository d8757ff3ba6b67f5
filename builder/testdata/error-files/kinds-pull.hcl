cache {
  url         = "s3://cache/fleet?endpoint=http://127.0.0.1:9000"
  public_keys = ["cache-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="]
}

host "h1" {
  address = "10.0.0.1"
  pull {
    channel            = "../prod" # ERROR: Invalid channel name
    publisher_keys     = ["ci-1:notbase64!"] # ERROR: Invalid publisher key
    interval           = "100ms" # ERROR: Invalid interval
    jitter             = "soon" # ERROR: Invalid jitter
    status_credentials = "secrets/status" # ERROR: Invalid status_credentials
    host_key_file      = "ssh/key" # ERROR: Invalid host_key_file
  }
}

host "h2" {
  address = "10.0.0.2"
  pull {
    channel        = "prod"
    publisher_keys = [] # ERROR: No publisher keys
  }
}
