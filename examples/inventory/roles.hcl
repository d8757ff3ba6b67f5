# What the hosts run: the roles say it, the inventory (hosts.hcl) says
# which hosts there are. What a role needs of the inventory comes as a role
# argument (size) or through host attributes (host.meta, host.address).

role "web" {
  variable "size" {
    default = "small"
  }
  file "/etc/web/size" {
    content = "${var.size}\n"
  }
  file "/etc/web/zone" {
    content = "${host.meta.az} ${host.address}\n"
  }
}

role "db" {
  file "/etc/db/role" {
    content = "primary\n"
  }
}

deployment "prod" {
  selector   = "@prod"
  batch_size = "50%"
}
