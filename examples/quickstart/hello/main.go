// Command hello is the quickstart's web service: it answers / with a
// greeting and /healthz with "ok". Its configuration is a JSON file.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
)

type config struct {
	Listen   string `json:"listen"`
	Greeting string `json:"greeting"`
	Host     string `json:"host"`
}

func main() {
	path := flag.String("config", "/etc/hello/config.json", "configuration `file`")
	flag.Parse()
	data, err := os.ReadFile(*path)
	if err != nil {
		log.Fatalf("hello: %v", err)
	}
	var c config
	if err := json.Unmarshal(data, &c); err != nil {
		log.Fatalf("hello: %s: %v", *path, err)
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s (%s)\n", c.Greeting, c.Host)
	})
	log.Printf("hello: listening on %s", c.Listen)
	log.Fatal(http.ListenAndServe(c.Listen, nil))
}
