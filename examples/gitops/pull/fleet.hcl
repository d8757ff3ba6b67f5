# The pull-mode twin of ../fleet.hcl: CI publishes signed releases to a
# channel in the fleet's binary cache; every host deploys itself from it and
# reports back. CI needs no SSH (see README.md and .github/workflows/).

cache {
  url         = "s3://deploy-cache/prod?endpoint=https://s3.eu-central-1.amazonaws.com&region=eu-central-1"
  # Hosts read the cache and the channel here (anonymous reads of the bucket).
  fetch_url   = "https://deploy-cache.s3.eu-central-1.amazonaws.com/prod"
  public_keys = ["cache.example.com-1:8W5e9rqXQQ6xwEz2N9UGVpZnKymdqW/Zvr2oTbRJ0z4="]
}

deployment "prod" {
  hosts        = ["app1", "app2", "app3", "app4"]
  canary       = 1        # wave 1: app1
  batch_size   = "50%"    # then two hosts per wave
  max_failures = 0        # one failure stops the later waves
  wave_timeout = "20m"    # a wave that has not reported by then stops the rollout
}

role "app" {
  variable "release" {
    default = "2026.11.1"
  }

  # Credentials that may only write channels/prod/status/ (see README.md).
  secret "pull-status" {
    source = "secrets/pull-status.age"
  }

  pull {
    channel            = "prod"
    interval           = "1m"
    publisher_keys     = ["ci-prod-1:g74RfCXUqZqwITu2YUWMdsd00Y9HVGM0RTVA/kyh01U="]
    status_credentials = secret.pull-status.path
  }

  file "/etc/app/release" {
    content = "${var.release}\n"
  }

  service "app" {
    description      = "the application (a stand-in: a real fleet ships a package)"
    exec_start       = "/bin/sleep infinity"
    restart_triggers = [var.release]
  }

  # In pull mode the health checks are the confirmation: a host whose
  # checks fail rolls back by itself and reports the check.
  health_check "app-active" {
    unit    = "app.service"
    timeout = "30s"
  }
}

# The first deploy of a host is a push (deploy .#prod over SSH, once), or an
# image with this generation; from then on it pulls. Each host signs its
# status reports with its SSH ed25519 host key: host_key (deploy keyscan
# prints it) is what the later waves and publish --wait verify them with.
host "app1" {
  address  = "app1.internal.example"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBiG6GW2rkrdtiumrzgw5d9ShgnJtQrHVaCRnMK9pQbI"
  roles    = [role.app]
}

host "app2" {
  address  = "app2.internal.example"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKXiTaMvhDXB3b/QGT8XoWbEs2ifoIx3Gaz061yS+HVa"
  roles    = [role.app]
}

host "app3" {
  address  = "app3.internal.example"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIITESAmnXqDb19xtxAo0N4ZKFjKFAVhhocco6X7Xdv8/"
  roles    = [role.app]
}

host "app4" {
  address  = "app4.internal.example"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHyg+igIzBjs13zqGSlFQ4ibouaJ/pnhO+DGfons80xk"
  roles    = [role.app]
}
