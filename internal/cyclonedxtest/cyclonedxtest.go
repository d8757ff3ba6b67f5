// Package cyclonedxtest validates CycloneDX JSON documents against the
// CycloneDX 1.6 JSON schema (embedded from testdata/cyclonedx, with the two
// schemas it references), for tests.
package cyclonedxtest

import (
	"bytes"
	"embed"
	"fmt"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed testdata/cyclonedx/*.json
var schemas embed.FS

var (
	once     sync.Once
	schema   *jsonschema.Schema
	schemaEr error
)

// compile compiles the schema; the references of bom-1.6 name its
// neighbours by their SNAPSHOT file names, so each is added under both.
func compile() (*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	for file, urls := range map[string][]string{
		"bom-1.6.SNAPSHOT.schema.json":  {"http://cyclonedx.org/schema/bom-1.6.schema.json"},
		"spdx.SNAPSHOT.schema.json":     {"http://cyclonedx.org/schema/spdx.schema.json", "http://cyclonedx.org/schema/spdx.SNAPSHOT.schema.json"},
		"jsf-0.82.SNAPSHOT.schema.json": {"http://cyclonedx.org/schema/jsf-0.82.schema.json", "http://cyclonedx.org/schema/jsf-0.82.SNAPSHOT.schema.json"},
	} {
		data, err := schemas.ReadFile("testdata/cyclonedx/" + file)
		if err != nil {
			return nil, err
		}
		for _, u := range urls {
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			if err := c.AddResource(u, doc); err != nil {
				return nil, fmt.Errorf("add %s: %w", u, err)
			}
		}
	}
	return c.Compile("http://cyclonedx.org/schema/bom-1.6.schema.json")
}

// Validate checks doc against the CycloneDX 1.6 JSON schema.
func Validate(doc []byte) error {
	once.Do(func() { schema, schemaEr = compile() })
	if schemaEr != nil {
		return fmt.Errorf("compile the CycloneDX schema: %w", schemaEr)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return fmt.Errorf("parse the document: %w", err)
	}
	if err := schema.Validate(v); err != nil {
		return fmt.Errorf("not a valid CycloneDX 1.6 document: %w", err)
	}
	return nil
}
