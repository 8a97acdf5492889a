from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "login_failures" (
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "email" VARCHAR(254) NOT NULL,
    "ip" VARCHAR(64) NOT NULL,
    "at" TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS "idx_login_failu_email_08d632" ON "login_failures" ("email");
CREATE INDEX IF NOT EXISTS "idx_login_failu_ip_de13e6" ON "login_failures" ("ip");
CREATE INDEX IF NOT EXISTS "idx_login_failu_at_cfd6ec" ON "login_failures" ("at");
COMMENT ON TABLE "login_failures" IS 'One failed sign-in, kept for throttling; never holds the password tried.';
CREATE TABLE IF NOT EXISTS "organizations" (
    "id" UUID NOT NULL PRIMARY KEY,
    "name" VARCHAR(100) NOT NULL,
    "slug" VARCHAR(64) NOT NULL UNIQUE,
    "created_at" TIMESTAMPTZ NOT NULL
);
COMMENT ON TABLE "organizations" IS 'A tenant. Everything a customer owns hangs off one of these.';
CREATE TABLE IF NOT EXISTS "servers" (
    "id" UUID NOT NULL PRIMARY KEY,
    "name" VARCHAR(63) NOT NULL,
    "description" VARCHAR(500) NOT NULL,
    "status" VARCHAR(16) NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL,
    "last_seen_at" TIMESTAMPTZ,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    CONSTRAINT "uid_servers_organiz_a54c1d" UNIQUE ("organization_id", "name")
);
COMMENT ON COLUMN "servers"."status" IS 'PENDING: pending\nONLINE: online\nOFFLINE: offline';
COMMENT ON TABLE "servers" IS 'A machine that runs (or will run) the agent.';
CREATE TABLE IF NOT EXISTS "users" (
    "id" UUID NOT NULL PRIMARY KEY,
    "email" VARCHAR(254) NOT NULL UNIQUE,
    "name" VARCHAR(100) NOT NULL,
    "password_hash" VARCHAR(255) NOT NULL,
    "is_active" BOOL NOT NULL,
    "locale" VARCHAR(16),
    "created_at" TIMESTAMPTZ NOT NULL
);
COMMENT ON TABLE "users" IS 'A person; belongs to organisations through memberships.';
CREATE TABLE IF NOT EXISTS "api_tokens" (
    "id" UUID NOT NULL PRIMARY KEY,
    "name" VARCHAR(100) NOT NULL,
    "role" VARCHAR(16) NOT NULL,
    "token_hash" VARCHAR(64) NOT NULL UNIQUE,
    "prefix" VARCHAR(16) NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL,
    "last_used_at" TIMESTAMPTZ,
    "expires_at" TIMESTAMPTZ,
    "revoked_at" TIMESTAMPTZ,
    "created_by_id" UUID REFERENCES "users" ("id") ON DELETE SET NULL,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE
);
COMMENT ON COLUMN "api_tokens"."role" IS 'VIEWER: viewer\nMEMBER: member\nADMIN: admin\nOWNER: owner';
COMMENT ON TABLE "api_tokens" IS 'A bearer token: shown once, stored as a SHA-256 hash, scoped to an org and a role.';
CREATE TABLE IF NOT EXISTS "memberships" (
    "id" UUID NOT NULL PRIMARY KEY,
    "role" VARCHAR(16) NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "user_id" UUID NOT NULL REFERENCES "users" ("id") ON DELETE CASCADE,
    CONSTRAINT "uid_memberships_organiz_5e1ecd" UNIQUE ("organization_id", "user_id")
);
COMMENT ON COLUMN "memberships"."role" IS 'VIEWER: viewer\nMEMBER: member\nADMIN: admin\nOWNER: owner';
CREATE TABLE IF NOT EXISTS "user_sessions" (
    "id" UUID NOT NULL PRIMARY KEY,
    "token_hash" VARCHAR(64) NOT NULL UNIQUE,
    "current_org_id" UUID,
    "created_at" TIMESTAMPTZ NOT NULL,
    "expires_at" TIMESTAMPTZ NOT NULL,
    "user_id" UUID NOT NULL REFERENCES "users" ("id") ON DELETE CASCADE
);
COMMENT ON TABLE "user_sessions" IS 'A browser session; the cookie holds a random token, this row its hash.';
CREATE TABLE IF NOT EXISTS "aerich" (
    "id" SERIAL NOT NULL PRIMARY KEY,
    "version" VARCHAR(255) NOT NULL,
    "app" VARCHAR(100) NOT NULL,
    "content" JSONB NOT NULL
);
        ALTER TABLE "servers" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "servers" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "servers_tenant" ON "servers"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);
        ALTER TABLE "api_tokens" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "api_tokens" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "api_tokens_tenant" ON "api_tokens"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);
        ALTER TABLE "memberships" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "memberships" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "memberships_tenant" ON "memberships"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid
                OR "user_id" = NULLIF(current_setting('app.user_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        """


MODELS_STATE = (
    "eJztXG1z2jgQ/isaf0pn0kwKgeTSm5uBhLRcE+g0pL3py3iELUATW3IlOSTX638/SdiAXy"
    "A2BWJSfwmxtGuLZyXt7qPFPwyX2sjhBw0P9+gtIsYp+GEQ6CL5T6JvHxjQ82Y9qkHAvqOF"
    "oYdNocR0M+xzwaAlZM8AOhzJJhtxi2FPYKqeYjRAH0GGGNBKp4CP6JgASiwpywVlyAaQAw"
    "iu3zZeVmp1MIJ8JHss6skeQQGUwmwoP6QcYNRBB+q5NrXkgzEZbu4RPsHffSS/6xCJEWLy"
    "QV++yWZMbHSPeHjp3ZoDjBw7Aii21Q10uykePN12c9M+v9CSavh906KO75KZtPcgRpRMxX"
    "0f2wdKR/UNEUEMCmTPwUx8xwlsEjZNRiwbBPPRdKj2rMFGA+g7yljGnwOfWMpGQD9J/Tn6"
    "KxjanJhpdro987rVM00jYVs1hJgtgiaLEjUvMBEKqB8/J/edAaJbDfWAs7eND3vV+gsNAe"
    "ViyHSnhsv4qRWhgBNVDfoMZf2ZwPlsBFk6zqF8DGk50FUwDhtmIM8WQAhfCNAGIDVceG86"
    "iAzFSF6+OjxcgvHHxgcNs5TSOFO5YieLuRN0VSZ9Cu8ZvmolpOPbIr6rMW7LMUG5zhJYh7"
    "pFxtr42G59an04BXcYjRH7Sq5aV0117SK3r64b51ftzimAtovJV9L91FGdcmtBLL4FZbJR"
    "PYuJ6ostVI8bSG93ptrN8iyDqNZ6DPT4hrO1pVA/ygBz/WghzKorCrPH0ADf54F4plHk+b"
    "/qXrP2eWwxpMAwoUiCfC57BHZROtBRzRjYdqB6EP6zi9DLL2h3ifMQrKkl0PfaV63rXuPq"
    "vXqcy/l3R+PX6LVUT0W3PsRa9+Jmmt4EfGr33gJ1CT53O624e57K9T4bakzQF9QkdGxCe2"
    "75h60hahGrO5AL0+cr2T2uuwbLB0MuiuF3xNAhJkstje49LG+3gp2jmqWVi2xlhu5kZLHK"
    "ao5qllYuspVDj9t/MPNluQnFX0h4d8e+j6a3M2QpG0KC/4Xq6TmxTVFdJ52ws/AqgmZwm0"
    "oezEOWhPqCMoSH5B16SKS5MWAD7qwbu91uQjxrnS0yBsdThittosl/JAJITFKixvVZ47xl"
    "LNgy1gD0DUdZUqhi7hCP4pvYJCPoylGAzs3lpaEndh9at2PIbDMyw1UPrdBYy1Q22eVW3H"
    "gLJHCoMVJfRg09wP6SDjG5gNjxGTJSCORI//4yEtlRkuZgIpqRSO4SBJQGsgGXU+YlJvvg"
    "FnkCDCgDYsSoEI60wWtA0B1iYETlV5LtCHiQ8zFltkQcIztJH6/zxmsmjZt42CYiB22spl"
    "ZsdQTzrLj0zVAN4eUflUq1elw5rNZPakfHx7WTwxMpq8eb7Dpe4hOa7TftTi8aIamG5WQy"
    "cuUMyMPxTBU2RfE8HYVWqWXh0KTUQo5H90XDG+zlQXci/fygXT87mT/d2iZZtlWknxdXlg"
    "hen8bpX+nDED7CXprLn+td6vDdqVw2b7/Y6Cke9ksimvdVlPitPK4t0nFteZxY8OPE8hjm"
    "d3EtJe20NVZPeaKcsM6plHCWLF5BWDw/IN62w9/tKrRzazcd0qcJ4iMTOyWMj0/8xYH8/N"
    "zJXAEqEIFEHIDWHWJyVkigAQSWzwV1EVMhEAcjSIYc0MEAUILkpyLYeGqt56/drKzqLMCO"
    "vixNKKs6N1vVyR1/mAffUL4sFHyUiisTqMXQP68EqiDc3DVid9qHJRx60LPUlXMtk9mJu9"
    "CSzhZJXwoFYL50s3uUgTF2HHX1Qp+IyWFK15zitPMpZ+L49DcuOb7SeRdmj4u6l2oW91Jd"
    "7F6qcfcyP6wcGMfUtge1sam5GwW6lilKqi2JkmopUZKAwuer0tUz7S2i7SFiK9TygW68b3"
    "XO2503pyDQ/0q6nct2p3UqcydHbtny+uIiaBgMVEvJVhd9I3pewVbiRwMcIbLqjwbmdMtC"
    "4yIXGpfnEiWRXnS2NzOR/jTpoebaU5LDkINfnBoqGjtzYuhJWUpegz5yqOJdBQUTYPiEJd"
    "Y1lP5wBOaKQNJyxJXvU3K6Bdhc9pekhU9dXFkg1nEjtZXFT7u3lAtuhDEPy7xz/9I+ofgM"
    "aY5KrZZpPteWzOdaolaYm9Ln4LuUSd2k1EGQLNif5/ViYPel4qbQDreT7W7IzW73MhLNN9"
    "uxsvfOjapA23ulsZdCeBKWhNXwc2kVteCi6rwFydRUY6VJXbDEqSQrSrJi/zmdDKkQ/xpx"
    "vqDeY7770UTA5BPJ7C/8YnQs9UCg91qf7liU3mIU/HoKAgaJTd3JG7v2pQDmQGoBLLh+PV"
    "fqS77WdNsyXSh4ulC+12g75Qo+Y4gIUybZeX/Ln9Asf8xfOvzf0+EX9EU3RbP6jlg509FE"
    "WdO/yaOIstB8hwvNG4hha2SkvV140rM024AzmbX+QPRXwvvf5f0LlVdHx0cn1frR9LUL05"
    "Zlb1t4/M0KqsYwZ8nSnEpJmWajTNWiyoFwIP4M0d3IEYB8okAkJar7+7rbWRDHz1Ti4Ry2"
    "BPgPOJgn9oodQHsJuAqMSAwXYrp31fgnDvfZZbcZDw7UDZpp0cE2ndnP/wH2y549"
)
