from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "signing_keys" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "public_key" VARCHAR(64) NOT NULL UNIQUE,
    "private_key" TEXT NOT NULL,
    "previous_public_key" VARCHAR(64),
    "announcement" JSON,
    "announcement_sig" VARCHAR(100),
    "created_at" TIMESTAMP NOT NULL,
    "retired_at" TIMESTAMP
) /* The control plane's Ed25519 signing keys; the newest unretired one signs. */;
        CREATE TABLE IF NOT EXISTS "commands" (
    "id" CHAR(36) NOT NULL PRIMARY KEY,
    "action" VARCHAR(100) NOT NULL,
    "kind" VARCHAR(16) NOT NULL,
    "params" JSON NOT NULL,
    "issued_by" VARCHAR(300) NOT NULL,
    "issued_at" BIGINT NOT NULL,
    "expires_at" BIGINT NOT NULL,
    "nonce" VARCHAR(64) NOT NULL,
    "signing_key_id" VARCHAR(16) NOT NULL,
    "status" VARCHAR(16) NOT NULL /* SENT: sent\nOK: ok\nERROR: error\nREFUSED: refused\nTIMEOUT: timeout\nUNDELIVERED: undelivered */,
    "code" VARCHAR(16),
    "message" TEXT,
    "output" JSON,
    "result_signature" VARCHAR(100),
    "created_at" TIMESTAMP NOT NULL,
    "finished_at" TIMESTAMP,
    "organization_id" CHAR(36) NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "server_id" CHAR(36) NOT NULL REFERENCES "servers" ("id") ON DELETE CASCADE
) /* A signed command sent to an agent, and the signed result it reported. */;
        CREATE TABLE IF NOT EXISTS "events" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "kind" VARCHAR(64) NOT NULL,
    "data" JSON NOT NULL,
    "at" TIMESTAMP NOT NULL,
    "organization_id" CHAR(36) NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "server_id" CHAR(36) REFERENCES "servers" ("id") ON DELETE CASCADE
) /* Something that happened: a server came online or went offline, an agent registered... */;
CREATE INDEX IF NOT EXISTS "idx_events_at_92f8f6" ON "events" ("at");
        CREATE TABLE IF NOT EXISTS "heartbeats" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "at" TIMESTAMP NOT NULL,
    "metrics" JSON NOT NULL,
    "organization_id" CHAR(36) NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "server_id" CHAR(36) NOT NULL REFERENCES "servers" ("id") ON DELETE CASCADE
) /* Metrics an agent reported; a bounded history per server. */;
CREATE INDEX IF NOT EXISTS "idx_heartbeats_at_4f9ba7" ON "heartbeats" ("at");
        ALTER TABLE "servers" ADD "install_token_hash" VARCHAR(64);
        ALTER TABLE "servers" ADD "registry_version" INT NOT NULL DEFAULT 0;
        ALTER TABLE "servers" ADD "agent_public_key" VARCHAR(64);
        ALTER TABLE "servers" ADD "metrics" JSON;
        ALTER TABLE "servers" ADD "registered_at" TIMESTAMP;
        ALTER TABLE "servers" ADD "security_mode" VARCHAR(16) NOT NULL DEFAULT 'full' /* FULL: full\nSTANDARD: standard\nREAD_ONLY: read-only */;
        ALTER TABLE "servers" ADD "hostname" VARCHAR(255) NOT NULL DEFAULT '';
        ALTER TABLE "servers" ADD "install_token_expires_at" TIMESTAMP;
        ALTER TABLE "servers" ADD "inventory" JSON;
        ALTER TABLE "servers" ADD "agent_version" VARCHAR(40) NOT NULL DEFAULT '';
        CREATE UNIQUE INDEX "uid_servers_install_6e5722" ON "servers" ("install_token_hash");"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        DROP INDEX IF EXISTS "uid_servers_install_6e5722";
        ALTER TABLE "servers" DROP COLUMN "install_token_hash";
        ALTER TABLE "servers" DROP COLUMN "registry_version";
        ALTER TABLE "servers" DROP COLUMN "agent_public_key";
        ALTER TABLE "servers" DROP COLUMN "metrics";
        ALTER TABLE "servers" DROP COLUMN "registered_at";
        ALTER TABLE "servers" DROP COLUMN "security_mode";
        ALTER TABLE "servers" DROP COLUMN "hostname";
        ALTER TABLE "servers" DROP COLUMN "install_token_expires_at";
        ALTER TABLE "servers" DROP COLUMN "inventory";
        ALTER TABLE "servers" DROP COLUMN "agent_version";
        DROP TABLE IF EXISTS "events";
        DROP TABLE IF EXISTS "signing_keys";
        DROP TABLE IF EXISTS "commands";
        DROP TABLE IF EXISTS "heartbeats";"""


MODELS_STATE = (
    "eJztXVtz2zYW/isYvWw6o3gS35IqOzsjx3KjrS11bDnptu5wIBESMSYBFgDteLv97wvwIo"
    "nXkDIlUwxebAnAAanv4HJuOPir41AT2fyg7+IJvUek0wN/dQh0kPyQquuCDnTdVY0qEHBq"
    "+42hiw2hmvnFcMoFgzMha+bQ5kgWmYjPGHYFpuopnT6YIsgQAz5RD3CLPhJAyUy25YIyZA"
    "LIAQQ3n/qvD09OgQW5JWtm1JU1ggIoG7OF/CfbAUZtdKCea9KZfDAmi+09wiP4Tw/J37pA"
    "wkJMPuj3P2QxJib6inj01b035hjZZgxQbKoO/HJDPLl+2e3t8PzCb6lef2rMqO05ZNXafR"
    "IWJcvmnofNA0Wj6haIIAYFMtdgJp5thzyJioI3lgWCeWj5quaqwERz6NmKWZ1/zj0yUzwC"
    "/pPUn+N/ha+21swwRuOJcTOYGEYnxVv1CglehEUzStS4wEQooP76O+h3BYhf2lEP+Pipf/"
    "3q6PQHHwLKxYL5lT5cnb99QihgQOqDvkLZ/5/C+aMFWTbOUfsE0vJFN8E4KliBvJoAEXwR"
    "QFuAtOPAr4aNyEJY8uvbN28KMP7cv/Zhlq18nKmcscFkHoVVh0GdwnuFr5oJ2fgOiOf4GA"
    "/lO0E5z1JYR7RNxrrzeTj4MrjugQeMHhG7I1eDqzP13UHOVH3vn18NRz0ATQeTOzL+MlKV"
    "cmlBLLkEleLRaRkWneZz6DTJIH+5M9RqVmUaxKnqYdC3F5ydTYXT4xIwnx7nwqyq4jC7DM"
    "3x1yoQryiaPP43XWtqH8czhhQYBhRpkM9ljcAOygY6TpkA2wxJD6IP+wi9/IHmmNhP4Zwq"
    "gH4yvBrcTPpXv6jHOZz/afv49ScDVXPolz4lSl8l2bTsBHwZTj4B9RX8Nh4Nktvzst3kt4"
    "56J+gJahD6aEBzbfpHpRFqMa7bkAvD4xvxPUlbA+fDV24K4/eE0REmhZxGX10su9uAz3FK"
    "zeUmc5mhBylZbDKb45Say03mcrTjTp+MalpuivAZCu/+8Peb6u0KWcoWkOD/QvX0ithmkN"
    "ZpTthbeJWBZn6faTxYhywN9QVlCC/Iz+gppeYmgA1tZ+NEd/sJ8ap0NckYfFxauLIGmvwg"
    "EUAiUIn6Nx/754NOzpJRA9C3HJVRoZq5QnwT39QiGUNXvgUY3V5edvyBPYWz+0fITCM2wl"
    "UNPaSJkmXbdJVz6CRLIIELHyP1Y9Srh9h/pI6si5s6E1XdItPxLGhU2nDM5chAJgjJAEdE"
    "hOZa+X5EdH2LrbBQ1FBOfsk1gIX85FImgcyyFdfUqzYPN2CB7xaYh+Ese23PN9usKNpott"
    "mGifgek4yxnI9w1L6N+NZuFnMhgw5Pw/vvm/Eox+64pEgqUXgmwP+AjbnYFtBrS8bUw7bA"
    "hB+ox77EqqEQiilUEcyvrvq/Jjnw8XJ8llxeVAdnCXZgzr0cKSZ/wMeIWjjqj0qtKkcFq8"
    "pRelUJQcsyJJzhxZCIQqwzrQhK5NpDrBfqJV7/eHh4dPTu8M3R6fuT43fvTt6/eS/b+m+c"
    "rnpXwI+z4U/D0STOCVUQh7/IXFeEf6GxTjOgPAMIDVWg0p5tmq0ztWGFqd+fp+R6+XzjHm"
    "XbsPJxTlO2EPD6BRmp0wsvQ5ApF0qwot4d2B2lFVYUXKR6Ppr0fH3yjox/7gF6f0cG19fj"
    "6x5AjFF2R64HF7c3g/Oe1CTnynt1R5RJdnwryZRlm3qS8nZ0Prgcfh5cq3aefEcbPyCGzK"
    "Qm+0KuWqnVV5kxUfuNWNcwI862sXUQ53CRAe8Efc3ZctdI2oBwkaNk8OukWKRf+kkux6Of"
    "ouZJOT9hcveE62VIOfka1oriWRrW/uC+FVUqMKkZajuVazurtKJk0bZh7O/AWqPjbPLRb2"
    "+czRwTzK2N2J4g1Z75Jnvmtf94q+55jpiUwysCGyPSkGqXfENc8sG4rAHkm2VHLYU3NoOz"
    "gX0ZZ/zgAfkvnXLFBxXdIkc8Uk1KuuFvqIOEJaEEwoICWLJXyWmzByAIsAEz+XxAiY2J/M"
    "fAo3Ko0/lcfe8u3eqAoYXUjZQl4+Ag7Zbf2lNqdtMX+h+yVvkMu3c4zJp7nmKHRu989712"
    "LW/RBK5Qr2L2iNprt3LttpDqWtkulfCdrjvt1cG1btZe3Wx/TBpaNdOq2d4M4P3VzD4hyM"
    "QUwUztbFXZLdLQrKhZSS3tCklQZ3xdEQpilT9IDWpKlR/ZBBZW2TCegCvVqQC9tCL2nI60"
    "rrWnupaWQdvoEHCCqVxFz1sj2b2q1yIHt5b32yvvtwdSLfB/nwL/vsLbWIn/ki4wuYDYVv"
    "FIGUJ/rL5Q7rdVS2MeNC0p+48JAopCCuYqKuo1Jl1wj1wB5pQBYTEqhC3h/wAIUo4Ui8qf"
    "5B9wdCHnj5SZEmycdVayzo61brCnugFy5Aio4ohZEmzLE/NyucUOT8p4YmSrXFeMX5c47e"
    "RWQTdo3T5o6/dxaaW2pY6VlNj6Mpv+lZ8lklvYzdry12oLN3xn2a7cbp/P9Iwd9veUHO+p"
    "9Bl/6EQFTUpUoPOsNjzPqo6b/162Fm3D25kNT+1EFWFdI9FwavtdQ+x3Hq/Felcysdm+Qr"
    "s2d5tkuYsN7AwxPjnw8wX59bFTOsOZQAQScQAGD4g9BfHPEMw8LqiDmBKBOLAgWXAV6Qyo"
    "inyeKwMbz7wE43md6XxmDVjRi9QEfd3Fdk/HcttbVME3aq9vUPimKU4rUPnQt0uBaohtLn"
    "SFZmzoKydp/lYe+BlLb+IOnFnqVJJ/col5cpt9pQ4oYdtW337wPWJ+LF3Wpl2NuJSNz//F"
    "2sanN+/GrHHx7eWozPZylL+9HKVOM629VgWME2Q7zC61rbEbB/qklJR0UiAlnWRISfuXy8"
    "tFxFSoVQO988tgdD4c/dQDIf0dGY8uh6NBLzyFKr9fXIQFwTlUba1u+kLULmErdZsSR4hs"
    "epvSGq3O89LksG6OZh7D4slwcnPxlViIk53scD2eyw6qLsYXt5eXsjNJeUckgKPz/vV5D6"
    "gfZ0plQWVW7J8bcn3+j8qtCM3XVE3yRizHWLHAto3NLmvMpq4l31mrLQ5x3Da/gKyoH71M"
    "NnmZXGUC2ehGsgSx5nWTee0bSAzXm9p4ppIzV1lhs2jbl09yC+GVPm7KTlb1lpUkYesU7+"
    "Myevdxvtp9nNK6LTlhqpqQ1mlaB/HhyUmpSOyTgkjsk7TQoPJiUZaxfuQfmYwR6aTAz0kK"
    "rPZc9pS/puSe+Mgi3d39E2+2NeKD8x+Hb4/fHb8/Oj1eHvtYlhSd9khfK/GC54G/86GtQw"
    "l17FvTA7RKx769kEc3uHpFsq2T5dVd1XYLPburC1xKuncnFgISO8GoDVwbEvQPDgamFB7e"
    "/gjC3oDq7YPvqSXoEXEBPMKkVii1Rz/MSjXjad9vrT3XHL31vZytfObemu/v3UwXrUELbR"
    "jMW1ZCXYYfJBbZOOdfm5Iga4WTvcies427U1yGHjD1+IZmlxxybXkpYXkhhHpSZHHCPM9l"
    "hfkknZbon5G1dQ1LdRdNJQNYBm37xr2+wUbHNsTabR7bEIq8G/lx1im1E6dpTpyGhAv7Z6"
    "8y1MroTFa+QqmONZUOFHZlW0o+gCmyqTqHIygItG4enBryc+p4CwusJQXIihneuB99xqcB"
    "lqtugdr40sl2GqQsbiXXTvPDsHfkP9uKdBal/aoc5ZQibIVGvguPJTfknoMfMgb1GaU2gi"
    "RnfV6nS4A9lYTbQjtaTna7IJ+Nx5cxKehsmDRw3KqMJK/e+tjLRjiwead9aDadwbxsLTnB"
    "tUuKFup4OnhdK3h1Ba8HqS83jF5fJ9ZqnlbzctW8G8R5Tq6H9erut5Q+gwctSyt/U0YfuX"
    "9fgk8XePVmlN5jFGZOhYBBYlIH+MHGXdkAcyCpABYqcwO3snTBurrVqmHDVcPNzg/UcG6g"
    "yUriFlIVeIwpuzxli4qROmlKfamUFu60cLf54Zvaj9s0jet7wuVSZzB0Pr9txjTqJHNlYh"
    "gbmmSujxieWZ0MlSOsKdQ24KpNrcmhdXzgC8YHbnBu6kVOTO23eVxNqgoIh81biO52gnEo"
    "ERVD0NZI9P1yFcPPXtSI9vf/AR1TOeY="
)
