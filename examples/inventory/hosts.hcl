# The hosts Terraform made, from its outputs: terraform-output.json is
# `terraform output -json` as recorded after `terraform apply` (commit it,
# or write command = ["terraform", "output", "-json"] instead of source to
# run it whenever the fleet is read). One host per element of for_each;
# each.key and each.value are the element, document the whole output.

hosts_from "web" {
  source   = "terraform-output.json"
  for_each = document.web_servers.value
  name     = each.value.name
  address  = each.value.public_ip
  host_key = each.value.host_key
  tags     = ["web", "prod", document.region.value]
  meta     = { az = each.value.az, private_ip = each.value.private_ip }
  hostname = "${each.value.name}.example"
  role "web" {
    size = each.value.size
  }
}

hosts_from "db" {
  source   = "terraform-output.json"
  for_each = document.db_servers.value
  name     = each.key
  address  = each.value.private_ip
  host_key = each.value.host_key
  tags     = ["db", "prod"]
  roles    = [role.db]
}
