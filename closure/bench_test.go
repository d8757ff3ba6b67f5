package closure

import (
	"crypto/sha256"
	"testing"
)

func BenchmarkMakeSourcePath(b *testing.B) {
	h := sha256.Sum256([]byte("x"))
	refs := []string{DefaultStoreDir + "/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-a", DefaultStoreDir + "/1mdqa9w1p6cmli6976v4wi0sw9r4p5pr-b"}
	for b.Loop() {
		if _, err := MakeSourcePath(DefaultStoreDir, h, "system-web1", refs); err != nil {
			b.Fatal(err)
		}
	}
}
