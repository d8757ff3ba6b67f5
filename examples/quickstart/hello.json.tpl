{
  "listen": ":${port}",
  "greeting": ${jsonencode(greeting)},
  "host": ${jsonencode(host)}
}
