package vmtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The Debian archive is found in apt's sources as apt reads them: both
// formats, its file names, its comments and its Enabled field.
func TestAptSourcesMirror(t *testing.T) {
	const debianKey = "/usr/share/keyrings/debian-archive-keyring.gpg"
	tests := []struct {
		name    string
		files   map[string]string // relative to the root
		want    string
		wantErr []string // substrings of the error
	}{
		{
			name: "one-line with options",
			files: map[string]string{"etc/apt/sources.list": `# The archive.
deb-src http://src.example/debian bookworm main
deb [ arch=amd64 signed-by=` + debianKey + ` ] http://one.example/debian/ bookworm main contrib # trailing comment
deb http://two.example/debian bookworm main
`},
			want: "http://one.example/debian",
		},
		{
			name: "one-line with a bracket and a # in the options",
			files: map[string]string{"etc/apt/sources.list": `deb [arch=amd64,arm64 trusted=no lang=#x] http://one.example/debian bookworm main
`},
			want: "http://one.example/debian",
		},
		{
			name: "deb822 with comments and several URIs and suites",
			files: map[string]string{"etc/apt/sources.list.d/debian.sources": `# Debian, from two mirrors.
Types: deb deb-src
# a comment inside the stanza
URIs: http://first.example/debian
 http://second.example/debian
Suites: bookworm bookworm-updates
Components: main non-free-firmware
Signed-By: ` + debianKey + `

Types: deb
URIs: http://first.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: ` + debianKey + `
`},
			want: "http://first.example/debian",
		},
		{
			name: "deb822 field names in any case",
			files: map[string]string{"etc/apt/sources.list.d/debian.sources": `types: deb
uris: https://one.example/debian
suites: bookworm
components: main
`},
			want: "https://one.example/debian",
		},
		{
			name: "disabled stanza",
			files: map[string]string{"etc/apt/sources.list.d/debian.sources": `Types: deb
URIs: http://off.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: http://on.example/debian
Suites: bookworm
Components: main
Enabled: yes
`},
			want: "http://on.example/debian",
		},
		{
			name: "security, updates and backports skipped",
			files: map[string]string{"etc/apt/sources.list": `deb http://security.example/debian-security bookworm-security main
deb http://sec2.example/debian-security/ bookworm main
deb http://one.example/debian bookworm-updates main
deb http://one.example/debian bookworm-backports main
deb http://one.example/debian bookworm contrib
deb http://one.example/debian bookworm main
`},
			want: "http://one.example/debian",
		},
		{
			name: "sources.list first, then sources.list.d by name",
			files: map[string]string{
				"etc/apt/sources.list":                  "deb http://list.example/debian bookworm main\n",
				"etc/apt/sources.list.d/a.list":         "deb http://a.example/debian bookworm main\n",
				"etc/apt/sources.list.d/0-first.list":   "deb http://zero.example/debian bookworm main\n",
				"etc/apt/sources.list.d/debian.sources": "Types: deb\nURIs: http://deb822.example/debian\nSuites: bookworm\nComponents: main\n",
			},
			want: "http://list.example/debian",
		},
		{
			name: "files apt ignores are ignored",
			files: map[string]string{
				"etc/apt/sources.list.d/a.list.disabled-by-farm":    "deb http://disabled.example/debian bookworm main\n",
				"etc/apt/sources.list.d/b.sources.disabled-by-farm": "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\n",
				"etc/apt/sources.list.d/c.list~":                    "deb http://backup.example/debian bookworm main\n",
				"etc/apt/sources.list.d/d,e.list":                   "deb http://comma.example/debian bookworm main\n",
				"etc/apt/sources.list.d/debian.sources":             "Types: deb\nURIs: http://real.example/debian\nSuites: bookworm\nComponents: main\n",
			},
			want: "http://real.example/debian",
		},
		{
			name: "the image's suite before another release",
			files: map[string]string{"etc/apt/sources.list": `deb http://trixie.example/debian trixie main
deb http://bookworm.example/debian bookworm main
`},
			want: "http://bookworm.example/debian",
		},
		{
			name: "Debian's keyring before a third party's for the same suite",
			files: map[string]string{"etc/apt/sources.list": `deb [signed-by=/usr/share/keyrings/vendor.gpg] https://vendor.example/apt bookworm main
deb [signed-by=` + debianKey + `] http://one.example/debian bookworm main
`},
			want: "http://one.example/debian",
		},
		{
			name: "a mirror with its own key when it is the only one for the suite",
			files: map[string]string{"etc/apt/sources.list": `deb [signed-by=/etc/apt/keyrings/local.gpg] http://local.example/debian bookworm main
`},
			want: "http://local.example/debian",
		},
		{
			name: "another release, not a third party's suite",
			files: map[string]string{
				"etc/apt/sources.list.d/00-vendor.sources": "Types: deb\nURIs: https://vendor.example/node\nSuites: nodistro\nComponents: main\nSigned-By: /usr/share/keyrings/vendor.gpg\n",
				"etc/apt/sources.list.d/debian.sources": `Types: deb
URIs: http://one.example/debian
Suites: trixie trixie-updates
Components: main
Signed-By: ` + debianKey + `

Types: deb
URIs: http://one.example/debian-security
Suites: trixie-security
Components: main
`,
			},
			want: "http://one.example/debian",
		},
		{
			name:    "only the security archive",
			files:   map[string]string{"etc/apt/sources.list": "deb http://one.example/debian-security bookworm-security main\n"},
			wantErr: []string{"/etc/apt/sources.list", "$DEPLOY_VMTEST_MIRROR"},
		},
		{
			name: "only third parties and disabled files",
			files: map[string]string{
				"etc/apt/sources.list.d/vendor.list":                  "deb [signed-by=/usr/share/keyrings/vendor.gpg] https://vendor.example/apt stable main\ndeb https://vendor.example/apt cloud-sdk main\ndeb cdrom:[Debian]/ bookworm main\n",
				"etc/apt/sources.list.d/debian.list.disabled-by-farm": "deb http://one.example/debian bookworm main\n",
			},
			wantErr: []string{"(read /etc/apt/sources.list.d/vendor.list)", "$DEPLOY_VMTEST_MIRROR"},
		},
		{
			name:    "no sources",
			files:   map[string]string{"etc/hostname": "x\n"},
			wantErr: []string{"none of /etc/apt/sources.list", "$DEPLOY_VMTEST_MIRROR"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for name, content := range tt.files {
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := aptMirror(os.DirFS(root), "bookworm")
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("aptMirror() = %q, want an error", got)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("aptMirror() error %q, want it to contain %q", err, s)
					}
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("aptMirror() = %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

// On a Debian machine, the mirror comes from its own apt sources.
func TestMirrorOnThisMachine(t *testing.T) {
	if _, err := os.Stat("/etc/apt/sources.list.d/debian.sources"); err != nil {
		t.Skipf("skipping: not a Debian machine with deb822 sources: %v", err)
	}
	t.Setenv("DEPLOY_VMTEST_MIRROR", "")
	got, err := Mirror()
	if err != nil {
		t.Fatalf("Mirror() on this machine: %v", err)
	}
	if !strings.HasPrefix(got, "http://") && !strings.HasPrefix(got, "https://") && !strings.HasPrefix(got, "file:") {
		t.Errorf("Mirror() = %q, want a URL debootstrap fetches from", got)
	}
	if strings.HasSuffix(got, "-security") {
		t.Errorf("Mirror() = %q, the security archive, want the archive proper", got)
	}
	t.Logf("Mirror() = %q", got)

	t.Setenv("DEPLOY_VMTEST_MIRROR", "http://override.example/debian")
	if got, err := Mirror(); err != nil || got != "http://override.example/debian" {
		t.Errorf("Mirror() with $DEPLOY_VMTEST_MIRROR = %q, %v, want the override", got, err)
	}
}
