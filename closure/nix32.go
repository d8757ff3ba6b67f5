package closure

import (
	"errors"
	"fmt"
)

// nix32Alphabet is Nix's base-32 alphabet: digits and lower-case letters
// without e, o, u and t.
const nix32Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// Nix32 encodes b the way Nix prints hashes in store paths and narinfo files.
// Nix's encoding reads the bytes from the end, so it is not RFC 4648 base32.
func Nix32(b []byte) string {
	n := (len(b)*8-1)/5 + 1
	if len(b) == 0 {
		return ""
	}
	out := make([]byte, n)
	for i := n - 1; i >= 0; i-- {
		bit := i * 5
		j, k := bit/8, uint(bit%8)
		c := b[j] >> k
		if j+1 < len(b) {
			c |= b[j+1] << (8 - k)
		}
		out[n-1-i] = nix32Alphabet[c&0x1f]
	}
	return string(out)
}

// ParseNix32 decodes a Nix base-32 string into size bytes.
func ParseNix32(s string, size int) ([]byte, error) {
	if want := (size*8-1)/5 + 1; len(s) != want {
		return nil, fmt.Errorf("nix32 %q: length %d, want %d", s, len(s), want)
	}
	out := make([]byte, size)
	for n := 0; n < len(s); n++ {
		c := s[len(s)-1-n]
		d := indexNix32(c)
		if d < 0 {
			return nil, fmt.Errorf("nix32 %q: invalid character %q", s, c)
		}
		bit := n * 5
		i, j := bit/8, uint(bit%8)
		out[i] |= byte(d) << j
		if i+1 < size {
			out[i+1] |= byte(d) >> (8 - j)
		} else if byte(d)>>(8-j) != 0 {
			return nil, errors.New("nix32 " + fmt.Sprintf("%q", s) + ": non-zero high bits")
		}
	}
	return out, nil
}

func indexNix32(c byte) int {
	for i := 0; i < len(nix32Alphabet); i++ {
		if nix32Alphabet[i] == c {
			return i
		}
	}
	return -1
}

// xorFold compresses h to size bytes by XOR-ing byte i into position i mod
// size, as Nix's compressHash does.
func xorFold(h []byte, size int) []byte {
	out := make([]byte, size)
	for i, b := range h {
		out[i%size] ^= b
	}
	return out
}
