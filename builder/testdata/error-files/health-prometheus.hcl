host "h1" {
  address = "10.0.0.1"
  health_check "ok" {
    url         = "http://prometheus:9090"
    query       = "sum(rate(app_requests_total{code=~\"5..\"}[1m]))"
    max         = 0.05
    window      = "2m"
    interval    = "10s"
    min_samples = 13
    run_on      = "operator"
  }
  health_check "nothreshold" { # ERROR: Invalid health check
    url   = "http://prometheus:9090"
    query = "up"
  }
  health_check "noquery" {
    type = "prometheus" # ERROR: Invalid health check
    url  = "http://prometheus:9090"
    max  = 1
  }
  health_check "badbounds" {
    url   = "http://prometheus:9090"
    query = "up"
    min   = 2 # ERROR: Invalid threshold
    max   = 1
  }
  health_check "where" {
    url    = "http://prometheus:9090"
    query  = "up"
    max    = 1
    run_on = "ci" # ERROR: Invalid run_on
  }
  health_check "toomany" {
    url         = "http://prometheus:9090"
    query       = "up"
    max         = 1
    window      = "30s"
    interval    = "10s"
    min_samples = 5 # ERROR: Invalid min_samples
  }
  health_check "fraction" {
    url         = "http://prometheus:9090"
    query       = "up"
    max         = 1
    min_samples = 1.5 # ERROR: Invalid min_samples
  }
  health_check "timeout" {
    url     = "http://prometheus:9090"
    query   = "up"
    max     = 1
    timeout = "1m" # ERROR: Invalid health check
  }
  health_check "window" {
    url    = "http://prometheus:9090"
    query  = "up"
    max    = 1
    window = "forever" # ERROR: Invalid duration
  }
  health_check "promurl" {
    url   = "prometheus:9090" # ERROR: Invalid url
    query = "up"
    max   = 1
  }
  health_check "httpwithmax" {
    url = "http://localhost/"
    max = 1 # ERROR: Invalid health check
  }
  health_check "tcpwithrun" {
    address = "localhost:80"
    run_on  = "operator" # ERROR: Invalid health check
  }
}
