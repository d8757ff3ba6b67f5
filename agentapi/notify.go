package agentapi

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"time"
)

// NotifyTimeout bounds one notification POST, the operator's and a pull
// host's.
const NotifyTimeout = 10 * time.Second

// PostNotify POSTs a notification body (JSON) to a notify block's url with
// client (nil: http.DefaultClient), within NotifyTimeout; any status but
// 2xx is an error.
func PostNotify(ctx context.Context, client *http.Client, url, userAgent string, body []byte) error {
	if client == nil {
		client = http.DefaultClient
	}
	ctx, cancel := context.WithTimeout(ctx, NotifyTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s", url, resp.Status)
	}
	return nil
}
