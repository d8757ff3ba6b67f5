# The quickstart fleet: two web hosts running a small Go HTTP service.
#
#   deploy check .          validate everything, build nothing; until the hosts
#                           have their host_key (deploy keyscan ADDRESS) and
#                           secrets/api-token.age is real (deploy secrets edit
#                           api-token), it says so, exit 1: they could not deploy
#   deploy build .#web1     build web1's system closure, print its store path
#   deploy build .#@web     build every host tagged "web"
#   deploy diff .#web1 --from /var/lib/deploy/store/...-system-web1

defaults {
  ssh_user = "root"
  timezone = "UTC"
}

deployment "prod" {
  hosts           = ["web1", "web2"]
  batch_size      = 1
  confirm_timeout = "30s"
}

host "web1" {
  address = "10.231.0.11"
  tags    = ["web", "prod"]
  roles   = [role.web]
}

host "web2" {
  address = "10.231.0.12"
  tags    = ["web", "prod"]

  # Apply the role with an argument instead of its default.
  role "web" {
    greeting = "hello from web2"
  }
}
