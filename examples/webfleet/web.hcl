# role "web": the site served by nginx from Docker's official image, with
# the configuration and the pages coming from this fleet. Nothing of nginx
# is installed on the host: the service runs in the image's root filesystem
# (a read-only store path), and rollback returns the previous image too.
role "web" {
  variable "port" {
    type    = number
    default = 8000
  }
  variable "workers" {
    type    = number
    default = 2
  }

  # deploy.lock pins the image to one manifest digest per architecture;
  # `deploy lock --update` re-pins the tag.
  package "nginx" {
    oci {
      image = "nginx:1-trixie"
    }
  }

  package "site" {
    path = "./site"
  }

  user "ops" {
    groups = ["www-data"]
  }

  file "/etc/web/nginx.conf" {
    content = <<-EOF
      user nginx;
      worker_processes ${var.workers};
      pid /run/nginx.pid;
      error_log stderr notice;
      events {
        worker_connections 1024;
      }
      http {
        include /etc/nginx/mime.types;
        access_log off;
        server {
          listen ${var.port};
          root /usr/share/nginx/html;
          add_header X-Weight ${lookup(host.meta, "weight", "1")};
        }
      }
    EOF
  }

  service "web" {
    description = "static site (nginx from an image)"
    root        = package.nginx
    # The image's entrypoint script would rewrite files in the read-only
    # image: run nginx itself.
    exec_start = "/usr/sbin/nginx -g 'daemon off;'"
    bind = [
      "/etc/web/nginx.conf:/etc/nginx/nginx.conf",
      "${package.site}:/usr/share/nginx/html",
    ]
    cache_directory = ["nginx"]
    restart         = "always"
  }

  firewall {
    allowed_tcp_ports = [var.port]
  }

  health_check "web-http" {
    url     = "http://127.0.0.1:${var.port}/"
    timeout = "15s"
  }
}
