package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// NotifyTimeout bounds one notification POST, the operator's and a pull
// host's.
const NotifyTimeout = 10 * time.Second

// NotifyPayload is what a notify block of format receives: for "text" the
// one-line form as {"text": ...}, as chat webhooks take it; else body as
// JSON.
func NotifyPayload(format, text string, body any) []byte {
	var v any = body
	if format == "text" {
		v = map[string]string{"text": text}
	}
	data, err := json.Marshal(v)
	if err != nil {
		panic("agentapi: encoding a notification: " + err.Error())
	}
	return data
}

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
