# A small web fleet: three web servers behind tags, one database host, a
# shared base role, and two deployments. The web servers run nginx from
# Docker's official image (web.hcl); every host runs Prometheus'
# node_exporter from its release archive (base.hcl). deploy.lock pins both:
# the image by manifest digest (from docker-library/repo-info), the archive
# by sha256.
#
#   deploy check .
#   deploy lock --update .      re-pin the image tag and the archive
#   deploy build .#web          every host of deployment "web"
#   deploy build .#@db
#   deploy eval --json .#web2
#   deploy image .#db1 --service node_exporter -o node_exporter.tar

defaults {
  ssh_user = "root"
  timezone = "UTC"
  roles    = [role.base]
}

deployment "web" {
  selector        = "@web"
  batch_size      = "50%"
  max_failures    = 1
  confirm_timeout = "45s"
}

deployment "prod" {
  hosts      = ["web1", "web2", "web3", "db1"]
  batch_size = 1
}

host "web1" {
  address = "10.231.0.21"
  tags    = ["web", "canary"]
  roles   = [role.web]
}

host "web2" {
  address = "10.231.0.22"
  tags    = ["web"]
  roles   = [role.web]
}

host "web3" {
  address = "10.231.0.23"
  tags    = ["web"]
  meta    = { weight = "2" }
  role "web" {
    workers = 8
  }
}

host "db1" {
  address = "10.231.0.31"
  tags    = ["db"]
  roles   = [role.db]
  # The database host keeps its own message of the day.
  file "/etc/motd" {
    priority = "force"
    content  = "db1: handle with care\n"
  }
}
