from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "audit_log" (
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "seq" BIGINT NOT NULL,
    "at" TIMESTAMPTZ NOT NULL,
    "actor" VARCHAR(300) NOT NULL,
    "action" VARCHAR(100) NOT NULL,
    "target" VARCHAR(500) NOT NULL,
    "details" JSONB NOT NULL,
    "outcome" VARCHAR(32) NOT NULL,
    "prev_hash" VARCHAR(64) NOT NULL,
    "hash" VARCHAR(64) NOT NULL,
    "organization_id" UUID NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE,
    CONSTRAINT "uid_audit_log_organiz_2647e6" UNIQUE ("organization_id", "seq")
);
COMMENT ON TABLE "audit_log" IS 'One entry of the organisation''s append-only, hash-chained audit log.';
        ALTER TABLE "audit_log" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "audit_log" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "audit_log_tenant" ON "audit_log"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid)
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);
        CREATE OR REPLACE FUNCTION serverflow_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND current_setting('app.audit_prune', true) = 'on' THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'audit_log is append-only';
        END $$;
        CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON "audit_log"
            FOR EACH ROW EXECUTE FUNCTION serverflow_audit_append_only();"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        DROP TABLE IF EXISTS "audit_log";"""


MODELS_STATE = (
    "eJztXe1z4jYa/1c0fOl2hs3t5m237M3NkA3p0ibQy8tur6XjEVgBT4zkSnKyuV7/95Nsg8"
    "GWHdvYYLz6EoKlRza/R5aed/3VmhMT2eyg61i35AHhVgf81cJwjsQ/sbY2aEHHCVvkBQ7H"
    "ttcZOpbBZTfvMhwzTuGEi5Z7aDMkLpmITajlcIvIu7S6YIwgRRR4RB3AZuQJA4Inoi/jhC"
    "ITQAYguPnUfX14cgpmkM1Ey4Q4ooUTAEVnOhUfoh+gxEYH8r4mmYgbW3ha3S1cbP3pIvFb"
    "p4jPEBU3+v0PcdnCJvqK2OKr82DcW8g21wC1TDmAd93gz4537e6uf37h9ZSPPzYmxHbnOO"
    "ztPPMZwcvurmuZB5JGtk0RRhRyZK7AjF3bDniyuOQ/sbjAqYuWj2qGF0x0D11bMqv1z3sX"
    "TySPgHcn+ef4X8GjrXQzjMHw1rjp3RpGK8Zb+QgRXgSXJgTLeWFhLoH6629/3BAQ72pL3u"
    "Djp+71q6PT7z0ICONT6jV6cLX+9gghhz6pB3qIsvcZw/njDFI1zov+EaTFgxbBeHEhBDl8"
    "ARbwLQCqANLWHH41bISnfCa+vn3zJgXjz91rD2bRy8OZiDfWf5kHQdOh3ybxDvGVb4Ia3x"
    "525x7GffFMULxnMawXtHXGuvW53/vSu+6ARws9ITrCV72rM/l9juZj+b17ftUfdAA05xYe"
    "4eGXgWwUSwui0SUoE49Os7DoNJlDp1EGecudIVezPK/BOlU5DHp5wdnaq3B6nAHm0+NEmG"
    "XTOswORffW1zwQhxR1nv9F15rS5/GEIgmGAXkc5HPRwq05UgO9ThkB2wxIDxb/7CP04gea"
    "Q2w/B+9UCvS3/avezW336hd5uzljf9oeft3bnmw59K4+R66+irJpOQj40r/9BORX8Ntw0I"
    "tuz8t+t7+15DNBlxMDkycDmiuv/+LqArU1rtuQccNlhfgepS2B88Ej14Xxe8LoBSapnEZf"
    "HUsMV4DP65Say3XmMkWPQrIo8javU2ou15nLix13/Gzk03JjhBsovPvD3xfV2xBZQqcQW/"
    "+F8u45sVWQlmlO2Ft4pYHm/kFpPFiFLA71BaHImuKf0XNMzY0AG9jOhpHh9hPi8Gr4klH4"
    "tLRwqSaa+EcggLivEnVvPnbPe62EJaMEoO8YyqJC1XOFeBHf2CK5hq54CjC4u7xseRN7DC"
    "cPT5CaxtoMly3kkESuLPvGm+aH8+gViOHUw0j+GPnoSwOx01LajZ2XTMZOVmMxBqKzbU28"
    "GdYBEEwtDigS77bFCX0GJnJs8uybbQlGgFAwF1MIiFnxiChT2IbLGFFhCv49toJ4qPyhTc"
    "TaRFyTRSdiFzvKYhc7SraLHcXsw+IlMlxq5wF4laaBIL99k9UQn2qJj5nix1TsirmsvCHF"
    "9mAWWFi4qgViHejDk5MMOIteiTB7bRGUXUsMNSFzsQOaLI72TzfDQQLaMcqoFmtNOPgfsC"
    "3G91Z6USEtIVlTXRcAv7rq/hrF/uPl8Cy6iMsBziJ8EDIg5Qs087AhRqi5UJwLDqEKS04f"
    "8wSfR9A9ArmUdfcOavG44uP14dvjd8fvj06P34su3nMur7xL4UZ/cBuBEuFHA+EJfXYkAj"
    "FMb9HXBFBjhFtczHcg6d32fr1Nn8dLY9jlcPDjont0cq+DP0PQ5jPDgTzXBhoh2yLw/9jj"
    "LTRATdppicsNxSaauICoSAstJoVQP32zJ2uJSaSUlUs6WSHZaEMsNp1DNVJKSVw8yIG83y"
    "40yUr2SW4rmHFGiI0gTojAsFW8GAuSqpiwUO63C/fZcHi5BvdZP7pe38mIm1dvPexFJ8s3"
    "dMVnPXXxwveTWdUMSba4eDvzw+0s38dZFM3jZDXzOKZkPiDkGBSJectQnoU7Rre9VftkTx"
    "btJzSeEfJgMDShiBeTBdPG0GJhbrFQBx0lz/7mBh25jlmQ6+uUmut14boiaiF4eu1a1671"
    "2kBcnmt9Z77fG88j2lJ7gIPG9gt+YCNwq3odM7qDgWPDCTKB0CBh4JZte8k6fIYC9+0cYS"
    "602Eckr1FVitAmIyndv9D3evujaL9vvfy+koFGyNCca76aWserrQvQ8m3Oh2tIobdQHfy3"
    "TXj9VTonsGtEGlIt9NUknjKQPDZEOIjaayiw4VbzMp5sKbpuCGkoAzcU1bUVsVbaiWtavI"
    "c5fW6p1JOwtZ2qn8h+hk2m2bSTIUYAyVEBufc0CP9tZt7b/B2TCgfC5muC7ee2V3Pg9WQm"
    "wJXVCOSNgLhRXFEpa9BMIasM/bmZ5nJmTRPdAsp9U+ELCCbaZkpL9cEgPxweHh29O3xzdP"
    "r+5Pjdu5P3b5ZOgXhTmnfgrP+jdBC0V21hC49BskYjWZUL/oBge76YhrBgZZ/NbSNurG14"
    "f23BcReAWNOJYrdPdiQvCRoYsHyUKV75KCVc+SgerQwnai0gFeKAooEYV1KchUMqdvY8GI"
    "cUDcT4JBPGJykYn8QxNhGHliq6JyXUKiSpR6iVvG1jQq2IyyckXxTQCkkDp/3RYZbV+zB5"
    "8T5UFLt5zF1SaI2ogTCXX1MoL8Ia3BzgamO6tvzW3ZRWc3f/xyCHSmFN+ximVyWb0lZT4b"
    "LUCGVijiATBGSASS+8X5lTPB/moZc+6Chmp2AbCFK5qZgeqrKgJY2qK4HWYAVqpxjHtMJZ"
    "vcL5YKlyMZMRXvRvIr6lV0B0IIXzXIpmSKH1zNL1TIsxN6FgTfKEXyNq4KyvxFQYgKYyta"
    "f6llbJtIujsIsjrTJjGv6pdRk1A7IzAJNAGcq6yiwJGrjClG8JkHK9uL/xgNTlCpNxjlM2"
    "EPDyBRmh3XNXIchkqxofUm8xoU1qhTkFl9ZNb3Db8fTJER7+3AHkYYR719fD6w5AlBI6wt"
    "e9i7ub3nlHaJL3slDxCEvf5fBOkAUZ7iN8NzjvXfY/965lP1c8oww8pn5G3+5ZORFafZ43"
    "ZtG/EOtqFiFdNbZzxBicKuBNTv9cIWkCwttO9xQvnOMqpJxkDSuk0FWEiqtSvknNkNupWN"
    "tpvgx+BW0T5v42zm7xoRsTU6HDJs/5CJme+MUnvs4vT57/+5lpnCW//N7CFpsVYnuEVJfB"
    "r3MQoXYx63yt+kOqvfZ1yNfS+UV7n190vkwGbykiIlZa22lBEWFKeca4CJkM5BOBV4TKo0"
    "lt+Xu+l7lB0K9oEFSt95HrgKcZ5G3xVyYHkScZyfAkbqdOMypt5Az1Ebz5KU9V1JUS6hU6"
    "EXAlhnSi6yckaJLbp7RKb/UPkwiWoaqmadWm0z0phb8deCup4SvD5SxusBnMZ/5fpWqema"
    "78eptBycx8FtElSfMQrsD966BJHvPnor+2exa3e+pa9zv0comnmU6lCzln7FqUroGxDpWE"
    "r+1huIPo6iIz54Rv/fuudyejFHzqEb6+Gwz6gx87gLpYxsmMsAxk6HiV80b4otu/lL3voW"
    "XL3jd3v/Sub3rn8hpzHUQZMusS5kDFhqoygSUvVCFFE/bgbS9RQTJG3tNj16h0KT7ta9S+"
    "Ru+0q0JcX6fUnsY6exq1R/nb4LPpUt+tpMoDSrTGRqj04WuKMk66Tm15koaOe9BxD/WHVM"
    "c91CHuQdep1XVqdRxJQhzJJZm2UkNJLoMytBmiSWTJ2hwRJbYl/sg4j5UjL75jsnJsG0Dm"
    "1cPwymMAMRgSj2cCKyGCpPBIJVfU0GVoZdvOytB+SzVoy1NLdHXZJqrxYu9V5fWlJBrzTb"
    "L66uXurDpiQu43eTw1i/6NcGdu21FT+PikMk9O2iMmaCuKVvn3B+JqVH5zLRJ+Q6DXw+ob"
    "CnNssayTutp7TMh48Bvaaeopesye53BD5kIPFHAKlRFyMPMOOUFmZ3lKI5iI+wOCfYWTeq"
    "kHQvG8l9/by3qOgKKpxbiMYzo4iGusld1Fa7N7qs3WP1h/j4NvJepxcFNK5wf9dT3DdFG+"
    "QExuvW0NW113mhsOpJWK5rpmaxaiodW02ugPe5KRXs8JvL+OxE8IUj5GUKmdhY3tNA1ttu"
    "iWUUu7QgLUCVtVhPwi+R+EBjUmsoChCWZCTiP0GThCnfLRiytimwykda091bW0DNpEd9fc"
    "f5Xz6HkrJNtX9XbD1moOQ9PyfmPl/eZAqgX+b1Pg31d4ayvxX5KphS+gZctCuAqhf609Ve"
    "63ZU/j3u+aI27Qz+b1zsp6beE2eEAOB/eEAj6jhHNbwP8BYCQdKTMifpIX/+dAxp4INQXY"
    "luqQrjIH1rrBnuoGaC5mQB5HzJKgKk/MVnkQKemTxRMjeqWU9In5YixFJH7KSUZOM6Et38"
    "elldqGOlZiYutuNv0rJIvtsZnlqLb8ldbUDX++7Jdtt09murLSY1SOd5ku87ixoFpIe03e"
    "YSmxE6KSXy5Ts6Ctc9RD63O/96V33QGPFnpCdISveldn8rs/90e4e37VH3QANOcWHuHhl4"
    "FsJE/YV2Z2X4ZGl/D4VrYWbcPbmg1P7kQ5YV0h0XBq+11N7HeeSLU5xHes0ba7lXe3Tpa7"
    "tYmtEOOjEz9ZkF+dOxkNd13AEYaYH4DeI6LPfvwzBBOXcTJHVIpADMwgnjIZ6exVfCf30s"
    "DGUNxYt+lgJRvotJpQejV4OM93Gm3Qv86qQUFjUSXHsjHbnebBd9G/HHx3a2mu2BSnFahk"
    "6JulQNXENhe4QhUbeugkTd7KfT9j5k18DiczmZXkZS5RV2yz8tiWJ8u25bfvw1Ibqk07H3"
    "EmG5/3i7WNT2/etVnj1reXoyzby1Hy9nIUy2ZaeawcGEfIGlfj4SSTlHSSIiWdNKKquoOw"
    "KVHLB3rrl97g3CujHtCP8HBw2R/0OkEWqvh+cRFc8PNQtbW67gtRs4SttfIrkHGDIYQL8D"
    "1Kq4sR1zmsm6GJSy3+bEjJtfBCHB1ki+vxvRgg72J8cXd5KQYTlCMsABycd6/leRXix5lC"
    "WRjh61733BDr8386QL7jr4l8yWuxHFuSBbYtZPYH8YLNIMt1PpqaupSzLRptcVjHDX11LP"
    "EGFlga08bRy2Sdl8mwEkgBtseINa/rzGvPQGI47ti2JsYDynW8loq2CWcHVR5e6eEm7WQ5"
    "1e4YYeMU7/KLK87EC5PXhLRK0ziIKzlc1cKyLhahivUjOWVyjUgfTlk8Z9Lfc+lz8pqSmP"
    "GhIt1eYeM3Vc34kqsa7zAf+Buf2jqUUMe+1T1AK3Ps2y49ujccek+T4Nb1m9sv+3YN6YjI"
    "ml95O0NAXBKav/naowPBNuMfr+CP6B2qILkBxHW/cCgD/kBjpDykobxhdehWDRakdor3N7"
    "9EowWZFEEmrxF1I7NpnbWgCrR6x7EtZOa2U0fpNNQvQq2FQl0jpv6Qajm7DjkmNagRs1N3"
    "4d5XiLkRXBI/UDCqpdJewtZ05cXvJ90UOXQXgRqnxAaODTH6joGeeXhy8vYHEIwG5GgfvE"
    "BTjJ4Q48DFFHGpl3hZIrIbU6svpY1csgbzrZSG2VCiTlZYirnSSnCi1QzmikVAh1qPAgs1"
    "zslHZ0XIGhEjnOaOruIELYeiR4u4rKDXOIFcO44zqJgYE1cIKeqTiJJ9EVE67ZDY4NCJFS"
    "wNsQ3nUvUVtM2b95WkGOrQ7GT0mxuaHYi8hcLQVil1DFrdYtBqku3olY5QqJWLkhLJCqWs"
    "ypA5z9ERfQn+AMbIJrKMACfAN2Ywv+iBVxLUnc7ASk0zVcpj4XG0n6sGBsF2itq461qhNV"
    "IWKykVWv8s0i15YyqRzhZVi3M7v2KEjdDItxFwyQyx51iPikl9RoiNIE5Yn1fpImCPBWFV"
    "aC+Wk+0uyGfD4eWaFHTWjxo47mRBxVdvPexFJ8u3ecc95zaZwKRikwm5gUuKBup4OvdWK3"
    "hl5d76lfsLJt+uEms1T6t5iWreDWIsoVTdanP7JaXPYH7PzMrfmJIn5h335tH5Xr0JIQ8W"
    "Cg5+gIBCbJI58HIl26KDxYCgAhaXhefYTKULljWsVg1rrhoWS38uIe25zkpiBZXWXEqlXZ"
    "7Qac7QpzilPhNXC3dauCteO6D0agF14/qecDlRrtPlyLcVKqprZGeJXqxpjewuotZk1lKo"
    "HEFLqrYBwz6lnm2j4wN3GB9YoOzDTgo+7Ld5XL5UORAOujcQ3WqCcQjmOUPQVkj08dg5w8"
    "92akT7+/8HSm+q"
)
