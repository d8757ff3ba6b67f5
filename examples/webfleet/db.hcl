role "db" {
  user "db" {
    system = true
  }

  directory "/var/lib/db" {
    owner = "db"
    group = "db"
    mode  = "0750"
  }

  secret "db-backup-key" {
    source = "secrets/db-backup-key.age"
    owner  = "db"
    units  = ["db-backup.service"]
  }

  service "db-backup" {
    type        = "oneshot"
    user        = "db"
    exec_start  = "/bin/sh -c 'tar -czf /var/lib/db/backup.tgz -C /var/lib/db data'"
    environment = { KEY_FILE = secret.db-backup-key.path }
  }

  timer "db-backup" {
    on_calendar = ["*-*-* 03:00:00"]
    persistent  = true
  }

  activation_script "db-layout" {
    script = "mkdir -p /var/lib/db/data && chown db:db /var/lib/db/data"
  }

  firewall {
    trusted_interfaces = ["wg0"]
  }
}
