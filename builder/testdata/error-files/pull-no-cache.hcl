host "h1" {
  address = "10.0.0.1"
  pull { # ERROR: Pull mode needs a cache
    channel        = "prod"
    publisher_keys = ["ci-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="]
  }
}
