package outbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Download fetches a message's file as bot, decrypting it when it came
// from an encrypted room (content.File set), and refusing more than maxBytes.
func (o *Outbox) Download(ctx context.Context, bot id.UserID, content *event.MessageEventContent, maxBytes int64) ([]byte, error) {
	uri := content.URL
	if content.File != nil {
		uri = content.File.URL
	}
	mxc, err := uri.Parse()
	if err != nil {
		return nil, fmt.Errorf("message has no valid file URL: %w", err)
	}
	data, err := o.download(ctx, bot, mxc, maxBytes)
	if err != nil {
		return nil, err
	}
	if content.File != nil {
		if err := content.File.DecryptInPlace(data); err != nil {
			return nil, fmt.Errorf("decrypting the file: %w", err)
		}
	}
	return data, nil
}

// download tries the authenticated media API first and falls back to the
// legacy one for homeservers that predate it (Dendrite v0.13).
func (o *Outbox) download(ctx context.Context, bot id.UserID, mxc id.ContentURI, maxBytes int64) ([]byte, error) {
	cli := o.opts.Accounts.Client(bot)
	paths := []mautrix.PrefixableURLPath{
		mautrix.ClientURLPath{"v1", "media", "download", mxc.Homeserver, mxc.FileID},
		mautrix.MediaURLPath{"v3", "download", mxc.Homeserver, mxc.FileID},
	}
	var lastErr error
	for _, p := range paths {
		_, resp, err := cli.MakeFullRequestWithResp(ctx, mautrix.FullRequest{Method: http.MethodGet, URL: cli.BuildURL(p), DontReadResponse: true})
		if err != nil {
			var httpErr mautrix.HTTPError
			if errors.As(err, &httpErr) && (httpErr.IsStatus(http.StatusNotFound) || errors.Is(err, mautrix.MUnrecognized)) {
				lastErr = err
				continue
			}
			return nil, fmt.Errorf("downloading %s: %w", mxc, err)
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
		if err != nil {
			return nil, fmt.Errorf("downloading %s: %w", mxc, err)
		}
		if int64(len(data)) > maxBytes {
			return nil, fmt.Errorf("file %s is larger than %d bytes", mxc, maxBytes)
		}
		return data, nil
	}
	return nil, fmt.Errorf("downloading %s: %w", mxc, lastErr)
}

// Upload stores data as bot for a message in room: encrypted (AES-CTR, key
// in the returned file info, never uploaded) when the room is encrypted,
// plain otherwise. Exactly one of url and file is set.
func (o *Outbox) Upload(ctx context.Context, bot id.UserID, room id.RoomID, data []byte, mimetype, name string) (id.ContentURIString, *event.EncryptedFileInfo, error) {
	encrypted, err := o.opts.AS.StateStore.IsEncrypted(ctx, room)
	if err != nil {
		return "", nil, err
	}
	body, uploadType := data, mimetype
	var file *event.EncryptedFileInfo
	if encrypted {
		if o.opts.Encryptor == nil {
			return "", nil, ErrEncryptedRoom
		}
		body = append([]byte(nil), data...)
		file = &event.EncryptedFileInfo{EncryptedFile: *attachment.NewEncryptedFile()}
		file.EncryptInPlace(body)
		uploadType, name = "application/octet-stream", ""
	}
	var resp *mautrix.RespMediaUpload
	err = o.retry(ctx, "upload", func() error {
		var err error
		resp, err = o.opts.Accounts.Client(bot).UploadBytesWithName(ctx, body, uploadType, name)
		return err
	})
	if err != nil {
		return "", nil, err
	}
	if file != nil {
		file.URL = resp.ContentURI.CUString()
		return "", file, nil
	}
	return resp.ContentURI.CUString(), nil, nil
}
