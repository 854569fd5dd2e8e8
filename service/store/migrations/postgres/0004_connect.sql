-- The /connect page (issue 15): a token is either pasted ('token') or issued by Coder's
-- OAuth2 provider ('oauth': the encrypted text then holds the access and the refresh
-- token), and an OAuth token expires (refreshed before then).
ALTER TABLE accounts ADD COLUMN token_kind TEXT NOT NULL DEFAULT 'token'
    CHECK (token_kind IN ('token', 'oauth'));
ALTER TABLE accounts ADD COLUMN token_expires_at DOUBLE PRECISION;
