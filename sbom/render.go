package sbom

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
)

// Tool names the program that made a BOM, for its metadata.
type Tool struct {
	Name, Version string
}

// uuidFor is a name-based UUID (version 5 layout) of s: the same system
// gets the same serial number, so a BOM is reproducible.
func uuidFor(s string) string {
	h := sha1.Sum([]byte("deploy-sbom:" + s))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	x := hex.EncodeToString(h[:16])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// goPURL is the package URL of a Go module.
func goPURL(m Module) string {
	p := "pkg:golang/" + escapePURLPath(m.Path)
	if m.Version != "" && m.Version != "(devel)" {
		p += "@" + url.PathEscape(m.Version)
	}
	return p
}

func escapePURLPath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// CycloneDX renders the BOM as a CycloneDX 1.6 JSON document: a component
// per store path (type "application" for the system, agent and packages,
// "container" for images, "file" otherwise) carrying its kind, store path
// and NAR size as properties and its NAR hash as a SHA-256 hash; Go modules
// as "library" components nested in their package, with package URLs; the
// image digest as a property; the references as dependencies.
func (b *BOM) CycloneDX(tool Tool) ([]byte, error) {
	type prop struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	}
	type hash struct {
		Alg     string `json:"alg"`
		Content string `json:"content"`
	}
	type component struct {
		Type       string       `json:"type"`
		BOMRef     string       `json:"bom-ref,omitempty"`
		Name       string       `json:"name"`
		Version    string       `json:"version,omitempty"`
		Purl       string       `json:"purl,omitempty"`
		Hashes     []hash       `json:"hashes,omitempty"`
		Properties []prop       `json:"properties,omitempty"`
		Components []*component `json:"components,omitempty"`
	}
	type dependency struct {
		Ref       string   `json:"ref"`
		DependsOn []string `json:"dependsOn"`
	}
	type doc struct {
		BOMFormat    string `json:"bomFormat"`
		SpecVersion  string `json:"specVersion"`
		SerialNumber string `json:"serialNumber"`
		Version      int    `json:"version"`
		Metadata     struct {
			Tools struct {
				Components []component `json:"components"`
			} `json:"tools"`
			Component  *component `json:"component"`
			Properties []prop     `json:"properties,omitempty"`
		} `json:"metadata"`
		Components   []*component `json:"components"`
		Dependencies []dependency `json:"dependencies"`
	}
	d := doc{BOMFormat: "CycloneDX", SpecVersion: "1.6", SerialNumber: "urn:uuid:" + uuidFor(b.System), Version: 1}
	d.Metadata.Tools.Components = []component{{Type: "application", Name: tool.Name, Version: tool.Version}}
	d.Metadata.Properties = []prop{{"deploy:host", b.Host}}
	d.Components = []*component{}
	d.Dependencies = []dependency{}
	for _, c := range b.Components {
		cc := &component{Type: "file", BOMRef: c.Path, Name: c.Name,
			Hashes: []hash{{"SHA-256", hex.EncodeToString(c.NarHash[:])}},
			Properties: []prop{{"deploy:kind", c.Kind}, {"deploy:store-path", c.Path},
				{"deploy:nar-size", fmt.Sprint(c.NarSize)}}}
		switch c.Kind {
		case KindSystem:
			cc.Type = "operating-system"
		case KindAgent, KindPackage, KindPackageGo, KindPackageNix:
			cc.Type = "application"
		case KindPackageOCI:
			cc.Type = "container"
			cc.Properties = append(cc.Properties, prop{"deploy:image-digest", c.ImageDigest})
			if i := strings.IndexByte(c.ImageDigest, ':'); i > 0 {
				cc.Hashes = append(cc.Hashes, hash{"SHA-256", c.ImageDigest[i+1:]})
				cc.Version = c.ImageDigest
			}
		}
		seen := map[string]bool{}
		for _, bin := range c.Binaries {
			cc.Properties = append(cc.Properties, prop{"deploy:go-binary", bin.File + " " + bin.GoVersion})
			for _, m := range append([]Module{bin.Main}, bin.Deps...) {
				if m.Path == "" {
					continue
				}
				ref := c.Path + "#" + goPURL(m)
				if seen[ref] {
					continue
				}
				seen[ref] = true
				mc := &component{Type: "library", BOMRef: ref, Name: m.Path, Version: m.Version, Purl: goPURL(m)}
				if m.Sum != "" {
					mc.Properties = []prop{{"deploy:go-sum", m.Sum}}
				}
				cc.Components = append(cc.Components, mc)
			}
		}
		if c.Kind == KindSystem {
			d.Metadata.Component = cc
		} else {
			d.Components = append(d.Components, cc)
		}
		deps := append([]string{}, c.References...)
		d.Dependencies = append(d.Dependencies, dependency{Ref: c.Path, DependsOn: deps})
	}
	return json.MarshalIndent(d, "", "  ")
}

// SPDX renders the BOM as an SPDX 2.3 JSON document: a package per store
// path (its kind and NAR size in the comment, its NAR hash as a SHA256
// checksum), a package per Go module with a purl external reference,
// CONTAINS relationships from a path to its modules, DEPENDS_ON for
// references, and DESCRIBES from the document to the system.
func (b *BOM) SPDX(tool Tool) ([]byte, error) {
	type checksum struct {
		Algorithm     string `json:"algorithm"`
		ChecksumValue string `json:"checksumValue"`
	}
	type extRef struct {
		Category string `json:"referenceCategory"`
		Type     string `json:"referenceType"`
		Locator  string `json:"referenceLocator"`
	}
	type pkg struct {
		SPDXID           string     `json:"SPDXID"`
		Name             string     `json:"name"`
		VersionInfo      string     `json:"versionInfo,omitempty"`
		DownloadLocation string     `json:"downloadLocation"`
		FilesAnalyzed    bool       `json:"filesAnalyzed"`
		Checksums        []checksum `json:"checksums,omitempty"`
		Comment          string     `json:"comment,omitempty"`
		ExternalRefs     []extRef   `json:"externalRefs,omitempty"`
		PrimaryPurpose   string     `json:"primaryPackagePurpose,omitempty"`
	}
	type rel struct {
		Element string `json:"spdxElementId"`
		Type    string `json:"relationshipType"`
		Related string `json:"relatedSpdxElement"`
	}
	type doc struct {
		SPDXVersion       string `json:"spdxVersion"`
		DataLicense       string `json:"dataLicense"`
		SPDXID            string `json:"SPDXID"`
		Name              string `json:"name"`
		DocumentNamespace string `json:"documentNamespace"`
		CreationInfo      struct {
			Creators []string `json:"creators"`
			Created  string   `json:"created"`
		} `json:"creationInfo"`
		Packages      []pkg `json:"packages"`
		Relationships []rel `json:"relationships"`
	}
	id := func(s string) string {
		h := sha256.Sum256([]byte(s))
		return "SPDXRef-" + hex.EncodeToString(h[:10])
	}
	d := doc{SPDXVersion: "SPDX-2.3", DataLicense: "CC0-1.0", SPDXID: "SPDXRef-DOCUMENT",
		Name: "deploy-" + b.Host, DocumentNamespace: "https://deploy.invalid/spdx/" + uuidFor(b.System)}
	d.CreationInfo.Creators = []string{"Tool: " + tool.Name + "-" + tool.Version}
	// A fixed time keeps the document reproducible: the system path, not
	// the time, identifies what it describes.
	d.CreationInfo.Created = "1970-01-01T00:00:00Z"
	d.Packages = []pkg{}
	d.Relationships = []rel{}
	for _, c := range b.Components {
		p := pkg{SPDXID: id(c.Path), Name: c.Name, DownloadLocation: "NOASSERTION",
			Checksums: []checksum{{"SHA256", hex.EncodeToString(c.NarHash[:])}},
			Comment:   fmt.Sprintf("deploy:kind=%s deploy:store-path=%s deploy:nar-size=%d", c.Kind, c.Path, c.NarSize)}
		switch c.Kind {
		case KindSystem:
			p.PrimaryPurpose = "OPERATING-SYSTEM"
			d.Relationships = append(d.Relationships, rel{"SPDXRef-DOCUMENT", "DESCRIBES", p.SPDXID})
		case KindPackageOCI:
			p.PrimaryPurpose = "CONTAINER"
			p.VersionInfo = c.ImageDigest
			p.Comment += " deploy:image-digest=" + c.ImageDigest
		case KindAgent, KindPackage, KindPackageGo, KindPackageNix:
			p.PrimaryPurpose = "APPLICATION"
		default:
			p.PrimaryPurpose = "FILE"
		}
		d.Packages = append(d.Packages, p)
		for _, r := range c.References {
			d.Relationships = append(d.Relationships, rel{p.SPDXID, "DEPENDS_ON", id(r)})
		}
		seen := map[string]bool{}
		for _, bin := range c.Binaries {
			for _, m := range append([]Module{bin.Main}, bin.Deps...) {
				if m.Path == "" {
					continue
				}
				mid := id(c.Path + "#" + goPURL(m))
				if seen[mid] {
					continue
				}
				seen[mid] = true
				d.Packages = append(d.Packages, pkg{SPDXID: mid, Name: m.Path, VersionInfo: m.Version,
					DownloadLocation: "NOASSERTION", PrimaryPurpose: "LIBRARY",
					ExternalRefs: []extRef{{"PACKAGE-MANAGER", "purl", goPURL(m)}}})
				d.Relationships = append(d.Relationships, rel{p.SPDXID, "CONTAINS", mid})
			}
		}
	}
	return json.MarshalIndent(d, "", "  ")
}
