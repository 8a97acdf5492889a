from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "apps" (
    "id" UUID NOT NULL PRIMARY KEY,
    "name" VARCHAR(63) NOT NULL,
    "repo_url" VARCHAR(1000) NOT NULL,
    "branch" VARCHAR(255) NOT NULL,
    "build_commands" JSONB,
    "start_command" JSONB,
    "port" INT,
    "env_encrypted" TEXT NOT NULL,
    "health_path" VARCHAR(255) NOT NULL,
    "health_timeout_s" INT NOT NULL,
    "domains" JSONB NOT NULL,
    "tls" BOOL NOT NULL,
    "runtime" VARCHAR(40) NOT NULL,
    "keep_releases" INT NOT NULL,
    "webhook_secret_encrypted" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    CONSTRAINT "uid_apps_organiz_dc1707" UNIQUE ("organization_id", "name")
);
COMMENT ON TABLE "apps" IS 'An application: a git repository deployed to one or more servers.';
        CREATE TABLE IF NOT EXISTS "app_servers" (
    "id" UUID NOT NULL PRIMARY KEY,
    "live_deployment_id" UUID,
    "app_id" UUID NOT NULL REFERENCES "apps" ("id") ON DELETE CASCADE,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "server_id" UUID NOT NULL REFERENCES "servers" ("id") ON DELETE CASCADE,
    CONSTRAINT "uid_app_servers_app_id_029942" UNIQUE ("app_id", "server_id")
);
COMMENT ON TABLE "app_servers" IS 'An app placed on a server, and the deployment live there.';
        CREATE TABLE IF NOT EXISTS "deployments" (
    "id" UUID NOT NULL PRIMARY KEY,
    "number" INT NOT NULL,
    "kind" VARCHAR(16) NOT NULL,
    "branch" VARCHAR(255) NOT NULL,
    "commit_sha" VARCHAR(40),
    "release" VARCHAR(64),
    "spec" JSONB,
    "env_encrypted" TEXT NOT NULL,
    "triggered_by" VARCHAR(300) NOT NULL,
    "status" VARCHAR(16) NOT NULL,
    "reason" TEXT,
    "command_id" UUID,
    "created_at" TIMESTAMPTZ NOT NULL,
    "started_at" TIMESTAMPTZ,
    "finished_at" TIMESTAMPTZ,
    "duration_ms" INT,
    "app_id" UUID NOT NULL REFERENCES "apps" ("id") ON DELETE CASCADE,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "server_id" UUID NOT NULL REFERENCES "servers" ("id") ON DELETE CASCADE,
    CONSTRAINT "uid_deployments_app_id_ea90ce" UNIQUE ("app_id", "server_id", "number")
);
COMMENT ON COLUMN "deployments"."status" IS 'QUEUED: queued\nRUNNING: running\nLIVE: live\nFAILED: failed\nSUPERSEDED: superseded';
COMMENT ON TABLE "deployments" IS 'One deploy (or rollback) of an app to one server: what, why, how it went.';
        CREATE TABLE IF NOT EXISTS "deployment_logs" (
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "seq" INT NOT NULL,
    "at" TIMESTAMPTZ NOT NULL,
    "stage" VARCHAR(40) NOT NULL,
    "line" TEXT NOT NULL,
    "deployment_id" UUID NOT NULL REFERENCES "deployments" ("id") ON DELETE CASCADE,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE
);
COMMENT ON TABLE "deployment_logs" IS 'One line of a deployment''s log, as the agent streamed it.';
        CREATE TABLE IF NOT EXISTS "server_states" (
    "id" UUID NOT NULL PRIMARY KEY,
    "version" INT NOT NULL,
    "hash" VARCHAR(64) NOT NULL,
    "applied_hash" VARCHAR(64) NOT NULL,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "server_id" UUID NOT NULL REFERENCES "servers" ("id") ON DELETE CASCADE
);
COMMENT ON TABLE "server_states" IS 'The desired-state version of a server, as docs on deploys describe it.';
        ALTER TABLE "apps" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "apps" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "apps_tenant" ON "apps"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);
        ALTER TABLE "app_servers" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "app_servers" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "app_servers_tenant" ON "app_servers"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);
        ALTER TABLE "deployments" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "deployments" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "deployments_tenant" ON "deployments"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);
        ALTER TABLE "deployment_logs" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "deployment_logs" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "deployment_logs_tenant" ON "deployment_logs"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);
        ALTER TABLE "server_states" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "server_states" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "server_states_tenant" ON "server_states"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        DROP TABLE IF EXISTS "deployment_logs";
        DROP TABLE IF EXISTS "server_states";
        DROP TABLE IF EXISTS "deployments";
        DROP TABLE IF EXISTS "apps";
        DROP TABLE IF EXISTS "app_servers";"""


MODELS_STATE = (
    "eJztXW1z2zYS/isYfWk6o/gSvyVVbm5GjuVGrS31bCvptepwIBGSOKYAFiCt+Hr97weQlC"
    "iSIE3SpEQx+BJHJBaingWBfXYXi79aS6Ijkx11LeOePCDc6oC/WhguEf9P7F4btKBlBXfE"
    "BRtOTLcxtAzNFs3cy3DCbAqnNr8zgyZD/JKO2JQalm0Q8S2tLpggSBEFrlAHsAVZYUDwlL"
    "dlNqFIB5ABCO4+dV8fn52DBWQLfmdKLH7HJgDyxnTO//B2gBITHYnv1cmUf7GB59V9hYON"
    "Px3Ef+sc2QtE+Rf9/ge/bGAdfUVs/dF60GYGMvUQoIYuOnCva/aT5V4bjfqXV25L8fgTbU"
    "pMZ4mD1taTvSB409xxDP1IyIh7c4QRhTbSt2DGjmn6Ollf8p6YX7CpgzaPqgcXdDSDjimU"
    "1frnzMFToSPgfpP45/Rf/qNtNdO0wfBeu+vda1orplvxCBFd+JemBItxYWBbAPXX316/AS"
    "Du1Zb4go+furevTs6/dyEgzJ5T96YLV+tvVxDa0BN1QQ9Qdv/GcP64gFSO87p9BGn+oEUw"
    "Xl8IQA5egDV8a4AqgLS1hF81E+G5veAf3755k4Lx5+6tCzNv5eJM+BvrvcwD/9axd0/gHe"
    "Ar3gQ5vj3sLF2M+/yZIH/PYlivZeuMdetzv/eld9sBjwZaITrGN72bC/F5iZYT8bl7edMf"
    "dADUlwYe4+GXgbjJpxZEo1NQJh2dZ1HRebKGzqMKcqc7TcxmeV6DsFQ5Cnp+wtnZq3B+mg"
    "Hm89NEmMWtMMwWRTPjax6IA4k6j/+ic03p43hKkQBDg3Yc5Et+xzaWSA50WDICtu6LHq3/"
    "c4jQ8x+oD7H55L9TKdDf9296d/fdm1/E1y0Z+9N08eve98SdY/fqU+Tqq6iaNp2AL/37T0"
    "B8BL8NB73o8rxpd/9bSzwTdGyiYbLSoL71+q+vrlELad2EzNYcVkjvUdkSNO8/cl0UfyCK"
    "XmOSqmn01TJ4dwX0HJZUWq6zlil65JZFkbc5LKm0XGctr1fcyZOWj+XGBF9AeA9Hv8/S2w"
    "BZQucQG/+F4ttzYisRLdOdcLDwCgfN7EHqPNiGLA71FaHImOOf0VOM5kaA9X1nw0h3hwlx"
    "cDV4yShcbTxcsoHG/8MRQLZHibp3H7uXvVbClFEC0COGslCoes4Qz+IbmyRD6PKnAIPR9X"
    "XLHdgTOH1YQaproREu7pBjErmyaRu/tTxeRq9ADOcuRuLHiEffOIitltRvbD3nMrayOosx"
    "4I1NY+qOsA6AYG7YgCL+bhs2oU9AR5ZJnjy3LcEIEAqWfAgBPioeEWUS33AZPUpcwb/HZh"
    "AXlT+Ui1i5iGsy6UT8YidZ/GInyX6xk5h/mL9EmkPNPABvyzQQ5LdvsjriUz3xMVf8hPJV"
    "MZeXN5DYHcwcCwNXNUGEgT4+O8uAM2+VCLN7L4KyY/CupmTJV0CdxdH+6W44SEA7Jhllsc"
    "bUBv8DpsHsg7VeZEgLSELUdQ3wq5vur1HsP14PL6KTuOjgIqIHbgNSe41mHjXEBJUWimvB"
    "IlTiyeljOyHm4TePQC5s3YODmj8u//P6+O3pu9P3J+en73kT9zk3V96laKM/uI9AifCjhv"
    "CUPlkCgRim9+hrAqgxwR1O5nuw9O57v96nj+ONM+x6OPhx3Tw6uMPgLxA07YVmQTvXAhoR"
    "2yHw/zjgJdRHTfhpiWNrkkU0cQKRiRaaTAqhfv7mQOYSnQgrK5d1siXyogWx2HAOaKSwkm"
    "z+IEfi+/bBJCtZJ21ToowLQkwEcUIGhinTxYSLVKWENbnfLdwXw+F1CO6LfnS+HomMm1dv"
    "Xex5I8NzdMVHPXXwOvaTmWoGIjucvK3l8W6m79MsRPM0mWaexkjmA0KWRhEftwzlmbhjcr"
    "ubtc8OZNJeocmCkAeNoSlFdjFbMK0PZRbmNgtV0lHy6G9u0pFj6QW1HpZUWq+L1iVZC/7T"
    "q9C6Cq3XBuLyQut7i/3euRHRljwC7N9sPxMH1vywqtswYzgYWCacIh1wBgn9sGzb3axjL5"
    "Afvl0ibHMW+4jENSrbIvSSnqThX+hFvb1eVNy3XnFfoUAtUGjOOV8urfLVwga0eJvz4RpI"
    "qCVUJf/tEl5vls4JbEhIQaqMvprkU/qWxwsR9rP2GgpssNQ8jyfbmK4vhDSwgRuKamhGrB"
    "M7+einfEi4yccgGySZmWxn7mQpacD4uOA8whfjVIKTBq+QAH8+bAekwm/Ip1GuMOBnnlI+"
    "MGRVDErqVRUuqMFSmcZO4FS+SibHsgKJZiZNll+84MGQpY4lI7xu30R8S9+wbUEKl7lSEA"
    "KJemQgiK9tTAaCwZiTsL8mecCHhBo46k8yzSonKbPKSXxW8UGTRY8ujHlihDwktrvoePUZ"
    "kj8cH5+cvDt+c3L+/uz03buz9282kfL4rbSQ+UX/RxE1D2lCkkeZspE8Df/UbeRKAdkVgI"
    "lPgDJvqCFyxtSEGab8SjPCruffrz0g+e7qZJzjkg0EvHxDhjN625EYMtmKXAXSO8y/Eaww"
    "p+HSuusN7jsunxzj4c8dQB7GuHd7O7ztAEQpoWN827sa3fUuO5xJzkRdlTEWYffhiIv5Cb"
    "ljPBpc9q77n3u3op3Dn1HESaiXgLR/VU45q8/zxqzbF1JdzQI6VWO7RIzBuQTe5Gy1LZEm"
    "ILzr7DT+wlmOxMpJZliBhNr0VJxKeS41TSynfG6n+RKOJbJNGPu7KDXpQTchuoTDJo/5iJ"
    "ga+MUHvkqHTR7/h5kYmSUddmZggy0KqT0iqqp21Sf/Na5nlV6i0kvqD6lKL6lDeolKhzj4"
    "dIjLTe5qS5IRsXW3nZYUEWTAZsyLGOJ1FjV4Rag4ScEUv+d7QGZuEoNlrYtsech1wGoB7T"
    "b/96kNFmQlMhlW/OviuRGl9pwhndsdn6IIvErsrlfqhK+VGNKJoZ9AoElhn9I2ptY/TcKf"
    "hqoaplW7Tg+kctdu4K2k5IhIlzNsjS1gPvf/tlTz3HTllwfwd/jn84huRJqHcAXhXwtN87"
    "g/1+2V37O431OV5tpjlIs/zXwuQsg5c9eicg3Mdagkfe0A0x14UwfpOQd869+j3khkKXjS"
    "Y3w7Ggz6gx87gDpY5MmMsUhk6Lgbfcf4qtu/Fq1n0DBF67vRL73bu96luMYcC1GG9LqkOV"
    "C+oMpcYMkTVSDRhDV452VivM0YeQ+7CEmpncMq1qhijW5x3kJaD0uqSGOdI40qovxt6Fl3"
    "qBdWku0DSvTGRqRUrei4R1aV1VBlNQ4FXpX3oPIe6hiYV2U1VFmNA0L1APJIrsm8lZpKIh"
    "q0s2WTaCaZ58goMQ1xKtsMwK0Kfd8xwDtpA8jcehhueQzAO0P88XRgJGSQFO6p5IoaqVuF"
    "ZcuixDD2x9HLMkKqN4t3sj81OV2EoT9zsBO/tUoUkdGS3HS+sT66JtF4vvbK9vWlbDS2X7"
    "Krr17hzqozJsR6kydSs27fiHDmrgM1hau9llno9YCUoLwoivIfDsTVUH49lAn/QqDDafUN"
    "hTk2WdaJrvYeE3Y8eDfaafQUPWbf53BHlpwHcjg5ZYQ2WPBeubb1zqaoPJjy7wcEe4STul"
    "sPOPGcic/tTT1HQNHcYLbIYzo6ijPWyr5FsdkDZbP1T9Y/4ORbgXoc3JRDFf32qp5huilf"
    "ICe33r6Gnc47zU0HUqSiuaHZmqVoKJpWG/5wIDvS6zmADzeQ+AlBak8QlLKz4GY7jaEt1s"
    "0ysrQbxEGdsm0i5BXJ/8AZ1ISIAoY6WHA7jdAnYHE65aEXJ2Iv6UhxrQPlWsoGbWK4a+m9"
    "ynl43pbI7qneftRaCalT9n5z7f3mQKoM/m/T4D9UeGtr8V+TuYGvoGGKQrgSoz90P9XuN0"
    "VLbeY1zZE36O3mdc/Kem3gNnhAlg1mhAJ7QYltmxz+DwAjEUhZEP6T3Pw/CzK2IlTnYBuy"
    "Q7rK7FhxgwPlBmjJR0CeQMxGoKpIzE51ECnpkyUSw1ullPSJxWIMSSZ+yklGVjOhLT/GpU"
    "htQwMrMbN1P4v+DRLF9tjCsGRL/tbd1AV/uWmXbbVPVrq00mPUjneYKvP4YkO1EHtNXmEp"
    "MROykp8vU7OWrXPWQ+tzv/eld9sBjwZaITrGN72bC/HZG/tj3L286Q86AOpLA4/x8MtA3C"
    "Qr7JGZ/ZehUSU8vpWlRfnwdubDEytRTli3RBScyn9XE/+da1K9HOIRa7TvbuvdrZPnLjSw"
    "JWZ8dOAnG/LbYyej464LbIQhto9A7xHRJy//GYKpw2yyRFSYQAwsIJ4zkensVnwnM+FgYy"
    "jurHtpZyU76BRNKL0aPFzmO43Wb19nalDQWVTJsWzMdOZ58F23Lwff/XqaK3bFKQKVDH2z"
    "CFRNfHN+KFSyoAdB0uSl3IszZl7El3C6ELuS3J1L1OHLrDi2ZWWYpvj0fVBqQ7Zo5xPO5O"
    "Nzf7Hy8anFuzZzXHh5OcmyvJwkLy8nsd1MW4+VA+OIWONqPJxlspLOUqyks0ZUVbcQ1gVq"
    "+UBv/dIbXLpl1H35MR4OrvuDXsffhco/X135F7x9qMpbXfeJqFnGVqj8CmS2xhDCBfQelV"
    "XFiOuc1s3Q1KGG/aQJy7XwRBztZIfz8Yx3kHcyvhpdX/POuOQYcwAHl91bcV4F/3E6Jwtj"
    "fNvrXmp8fv5PB4h3/DURL3ktpmNDqMA0uc3+wF+wBWS5zkeTS5dytkWjPQ5h3NBXy+BvYI"
    "GpMa0fNU3WeZoMKoEUUHtMWOm6zrp2HSSa5UxMY6o9oFzHa8lkm3B2UOXplS5uwk+Wk3bH"
    "BBtHvMsvrrjgL0xeF9K2TOMgruRwVQOLuliESuaP5C2TISF1OGXxPZPemkufkueUxB0fMt"
    "HdFTZ+U9WIL7mq8R73A3/jQ1ulEqrct7onaGXOfdtnRPfOhu7TJIR1vdvt52O7mghEZN1f"
    "eb9AgF/izF9/7coBf5nxjlfwenQPVRDaAPy6VziUAa+jCZIe0lBetyp1qwYTUjsl+pvfol"
    "GGTIohk9eJ+iK3aZ1ZUAWs3rJMA+m5/dRROQX1s1Aro1DViKk/pMrOrsMekxrUiNlruPDg"
    "K8TccS3xH8gV1ZKxl+BuOnnx2okwRQ7uwlGzKTGBZUKMvmOgpx+fnb39Afi9AdHbBzfRFK"
    "MVYjZwMEW24CXuLhHRjMnpS2k9l8xgvpXSMC+0qJMJS7FQWglBtJrBXLEJaFHjkWMhxzn5"
    "6KyIWCNyhNPC0VWcoGVR9GgQhxWMGieIq8BxBoqJMXG4kSI/iSg5FhGVUwGJFxw6sYWlxp"
    "fhXFRfItu8cV/JFkOVmp2MfnNTs32Tt1Aa2rakykGrWw5aTXY7uqUjJLRyXVIimVCKqgyZ"
    "9zlavC3BH8AEmUSUEbAJ8JwZzCt64JYEdeYLsFXTTLblsXA/Ks5VA4dgO4U27rtWaI3IYi"
    "WlQuu/i3RH0ZhKrLN11eLcwa+YYCMY+S4SLpnG1xzjUTKoLwgxEcQJ8/O2XATsCResCu31"
    "dLLbCfliOLwOWUEX/aiDYyQKKr5662LPGxmezzseOTfJFCYVm0zYG7iRaCDHU3tvFcEra+"
    "+tV7m/4ObbbWFF8xTNS6R5d4ixhFJ127fbz5E+jXktM5O/CSUr5h735sp5Ub0pIQ8G8g9+"
    "gIBCrJMlcPdKtnkDgwEuBQxbFJ5jCxkXLKtbRQ1rTg2LbX8uYdtznUliBZXWHEqFX57Qec"
    "7Up7ikOhNXGXfKuCteO6D0agF10/qBaDnRrlPlyHeVKqpqZGfJXqxpjewuosZ00ZJQDv9O"
    "KtuAQZtSz7ZR+YF7zA8sUPZhLwUfDts9Ll6qHAj7zRuIbjXJOATbOVPQtkTU8dg508/26k"
    "T7+/8xSkZX"
)
