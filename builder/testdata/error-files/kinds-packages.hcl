host "h1" {
  address = "10.0.0.1"
  package "none" { # ERROR: Invalid package source
  }
  package "two" { # ERROR: Invalid package source
    path = "./x"
    url  = "https://example.com/x"
  }
  package "unpinned" {
    url = "https://example.com/tool" # ERROR: Unpinned url
  }
  package "pinned-not-locked" {
    url    = "https://example.com/tool2" # ERROR: Input not in deploy.lock
    sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
  }
  package "badhash" {
    url    = "https://example.com/tool3"
    sha256 = "abc" # ERROR: Invalid sha256
  }
  package "ftp" {
    url    = "ftp://example.com/tool" # ERROR: Invalid url
    sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
  }
  package "outside" {
    path = "../elsewhere" # ERROR: Invalid package path
  }
  package "gomissing" {
    go { # ERROR: Invalid go package source
      src = "./nomodule"
    }
  }
  package "gonosrc" {
    go { # ERROR: Missing required argument
    }
  }
  package "unpack-path" {
    path   = "./x"
    unpack = true # ERROR: Unexpected unpack
  }
  package "strip-without-unpack" {
    url              = "https://example.com/a.tar.gz"
    sha256           = "0000000000000000000000000000000000000000000000000000000000000000"
    strip_components = 1 # ERROR: Unexpected strip_components
  }
  package "strip-negative" {
    url              = "https://example.com/b.tar.gz"
    sha256           = "0000000000000000000000000000000000000000000000000000000000000000"
    unpack           = true
    strip_components = -1 # ERROR: Invalid strip_components
  }
  package "unpack-executable" {
    url        = "https://example.com/c.tar.gz"
    sha256     = "0000000000000000000000000000000000000000000000000000000000000000"
    unpack     = true
    executable = true # ERROR: Unexpected executable
  }
  package "archive-unpinned" {
    url    = "https://example.com/d.tar.gz" # ERROR: Unpinned url
    unpack = true
  }
  package "image-unpinned" {
    oci {
      image = "registry.example.com/library/nginx:1.27" # ERROR: Unpinned image
    }
  }
  package "image-pinned" {
    oci {
      image = "registry.example.com/library/nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    }
  }
  package "image-bad" {
    oci {
      image = "Not A Reference" # ERROR: Invalid image
    }
  }
  package "two-sources" { # ERROR: Invalid package source
    path = "./x"
    oci {
      image = "registry.example.com/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    }
  }
}
