from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "instance_audit_log" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "seq" BIGINT NOT NULL UNIQUE,
    "at" TIMESTAMP NOT NULL,
    "actor" VARCHAR(300) NOT NULL,
    "action" VARCHAR(100) NOT NULL,
    "target" VARCHAR(500) NOT NULL,
    "details" JSON NOT NULL,
    "outcome" VARCHAR(32) NOT NULL,
    "prev_hash" VARCHAR(64) NOT NULL,
    "hash" VARCHAR(64) NOT NULL
) /* One entry of the instance's own chain: what instance operators did, and refusals */;
        ALTER TABLE "api_tokens" ADD "operator" INT NOT NULL DEFAULT 0;
        ALTER TABLE "users" ADD "is_operator" INT NOT NULL DEFAULT 0;
        -- The instance had no operators before: the first account (the one `serverflow up`
        -- created) becomes one, so plugins stay manageable after the upgrade.
        UPDATE "users" SET "is_operator" = 1
            WHERE "id" = (SELECT "id" FROM "users" ORDER BY "created_at", "id" LIMIT 1);
        CREATE TRIGGER IF NOT EXISTS "instance_audit_log_no_update" BEFORE UPDATE
            ON "instance_audit_log"
        BEGIN SELECT RAISE(ABORT, 'instance_audit_log is append-only'); END;
        CREATE TRIGGER IF NOT EXISTS "instance_audit_log_no_delete" BEFORE DELETE
            ON "instance_audit_log"
        BEGIN SELECT RAISE(ABORT, 'instance_audit_log is append-only'); END;"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "api_tokens" DROP COLUMN "operator";
        ALTER TABLE "users" DROP COLUMN "is_operator";
        DROP TABLE IF EXISTS "instance_audit_log";"""


MODELS_STATE = (
    "eJztXetzozi2/1dU/jI9Ve5st/Po3sytW5WHe8a7idM3j+m5u9miZKPY3GCJkSDp7Oz871"
    "cHsMEgCBBwMNGXTkfSEeR3hHReOueP3oKZxBY7R451ze4J7R2iP3oUL4j8T6qvj3rYcaIe"
    "aHDxxPYHY8cyXBjmN+OJcDmeurLnDtuCyCaTiCm3HNdi8JTeEZoQzAlHPtEhEnP2SBGjUz"
    "lWuIwTE2GBMLr65ej9YP8AzbGYy54pc2SPyxCWg/lM/pDjEGc22YHnmmwqH2zRWXOP8Kj1"
    "u0fk3zoj7pxw+aB//ks2W9Qk34lY/urcG3cWsc01QC0TJvDbDffJ8dtubkanX/yR8PoTY8"
    "psb0Gj0c6TO2d0NdzzLHMHaKBvRijh2CVmDGbq2XbIk2VT8MayweUeWb2qGTWY5A57NjCr"
    "9193Hp0Cj5D/JPhn77/DV4sNM4zxxbVxNbw2jF6Kt/AKCV6ETVNGYV1Y1AWg/vgzmDcCxG"
    "/twQNOfjm6fLd78KMPARPujPudPly9P31C7OKA1Ac9Qtn/mcL5ZI65Gufl+ATS8kWrYLxs"
    "iECOPoAlfEuAGoC0t8DfDZvQmTuXv3788CEH41+PLn2Y5SgfZya/2OBjHoddg6AP8I7whS"
    "9Bje+Qegsf45F8Jyy/sxTWS9o2Y937dTT8Nrw8RA8WeST8lp4Pz4/h9wVZTOD3o9Pz0fgQ"
    "YXNh0Vt68W0MnXJrITy5BRXi0UERFh1kc+ggySB/uzNgNyvzGaxT1cOg5zecjX0KB3sFYD"
    "7Yy4QZutZhdji5s76XgTiiaPP6r7rX1L6OsW2zR0OKHPZTGuVjJrcSTNVAJygTaE8kaVNw"
    "r1o2e1weX1ycwcwLIX63/YbRdQLoG9jE3n308ZeDLNdvHo2vE6hL6UeCwnhJyONkGu8SeE"
    "85AUwM7KYRP5U9rrUgasjXKROgmyHpzvI/27jByD/QvKDyIw5OjhyGXI/Oh1fXR+df17hy"
    "enQ9hJ6B3/qUaH2X3IxWk6Bvo+tfEPyK/nExHiaF0NW463/04J2w5zKDwo5jxg65ZesStT"
    "Wu21i4hicq8T1JWwPnw1duC+O3hNFLTHI5Tb47lpyuAp/XKTWX28xlTh6k/Fzla16n1Fxu"
    "M5eXJ+7kyShny0kRvsCssz38fdaIE5M6+QxT698Ynl4SWwVpnUazrYUXzJB390oTWRyyNN"
    "RfGCfWjP6dPKWMOQlgQwvxRWK67YQ4ao0+Mo4fV3Zc1UKT/5EIkEC2Pzm6Ojk6HfYytowa"
    "gL4RpIihoJ07xLP4pjbJNXTlW6DxzdlZz1/YEzy9f8TcNNZWOPSwAUu0rMamuxaDRbIFUz"
    "zzMYI/Bl595QZxekrviPOcY8Qp6hKhCEwW1tRfYYcIo5nlIk7kt21JzfoJmcSx2VPgnGCU"
    "IMbRQi4hJFfFA+FC4QGpY0aFw+OfqR3ER+Vf2hGiHSEt2XQS1t/dItbf3Wzr727KCyI/Is"
    "PjdhmA4zQdBPnjh6Luplx/U8rhNOHyVCzly4goNgezxMKiTW0Q60AP9vcL4CxHZcLs9yVQ"
    "9iw51ZQt5AloijTaf7u6GGegnaJMarHW1EX/QbYl3K2VXlRIAyRrqusS4HfnR78lsT85uz"
    "hObuIwwXGCD1IG5O4SzTJsSBFqLlTngsO4wpIzom6GZy8cnoAcZN2tg1q+rvzxfvBx79Pe"
    "592Dvc9yiP+eq5ZPOdxIOzgIfTAInfInBxBIYXpNvmeAmiLc4Gb+CpLe9fC36/x1vDKGnV"
    "2Mf14OTy7udfDnBNvu3HCwW+oATZBtEPi/bPERGqIGdlrmuYbiEM3cQFSklTaTSqgffNiS"
    "vcRkIGWVkk5iJC86EKst50iNBCnJlS+yA897DU2ykXPStRXMyA0UCCk2GCOwVO63NkSAe3"
    "Tp+ymsakYkG9y8ncVgM9v3XhFFcy9bzdxLKZn3hDgGJ3LdClJm407RbW7X3t+STfuRTOaM"
    "3RuCTDlxq8mCeXNosbC0WKiDjrJXf3eDjjzHrMj1dUrN9bZwXRG1EL69dq1r13prIK7Ptf"
    "5qvt8r3yPaU3uAw87+M35gI3Sr+gMLuoORY+MpMZHUIHHolu37V9LcOQndtwtCXanFPhBo"
    "46qLcC+ZSen+xYHXO5hF+33b5fcFBhoRQ0vu+WpqHa+WuJsiv+ZyuEYU+gjVwX+bhDfYpU"
    "sCu0akIdVCX0viKUPJ44UIh1F7HQU2Omqex1OsRNcXQhrJwB1FdW1HbJV24pmWO6Quf+qp"
    "1JOot5+rn8A4w2azYtrJBSWIwKyI3fkaRPA1C/9r/kGAwkGo+Z5R+6nvZ9Z4P51LcCHnBj"
    "wIyQelFZW6Ji0UsirI7y/TXI6tWaZbQHluKnwB4UJ7mdLSfDDIXweD3d1Pgw+7B5/39z59"
    "2v/8YeUUSHfleQeORz+Dg6Aft4UtPQbZGg2wqhT8IcHmfDEdYUHsnC1tI+6sbXh7bcFpF4"
    "Dc01VX+7MdySuCDgYs7xaKV97NCVfeTUcr46laC8iFOKToIMaNpCByMZcnexmMI4oOYrxf"
    "COP9HIz30xibxMWWKronJ9QqImlHqBU8tjOhVsxzp6xcFFCMpIPLfndQZPceZG/eA0VKp4"
    "fSibPWiDoIc/2Zs8oirMEtAa42pmvLb9tNaS1395+Ed6gU1rST6HpVtiktfhWuSCZcIdcI"
    "MVFIhgR44YP8s/L9qBt56cOBcnVKtqHwKjeXy0OV/LamWXW+2xbsQP0c45hWOJtXOO8t1V"
    "3MbISX47uIb+15Ph3M8aKUohlRaD2zdj3TEsLLSFiTveDXiDq46hsxFYagqUztub6lOJl2"
    "cVR2ceRlZszDPzcvo2ZAcQZQFipDRXeZFUEHd5j6LQEg18vnG/dEna4wG+c0ZQcBr1+Qkd"
    "q96ykEmWK1ESLqDV5oA62wpODSuxqOrw99ffKWXvz9ELH7Wzq8vLy4PESEc8Zv6eXwy83V"
    "8PRQapJ3kKj4loLv8uJGkoU33G/pzfh0eDb6dXgJ4zz5jhB4zIMbfa/PyqnU6st8McvxlV"
    "jXsgjpprFdECHwTAFv9vXPGEkXEN70dU/5wTmeQsrJ1rAiCp1FqLoqFZjUDDhO5d7Oy93g"
    "V9B2Ye1vokJRAN2EmQodNnvNJ8j0wq++8PX98uz1v503jYvcL7+zqCXmldieINVp8NscRK"
    "hdzPq+Vvsh1V77NtzX0veLtv5+0enqMnhPERER6+3nBUVEV8oLxkXAZaCACL1jHArw2vD3"
    "/Ah3g3CQ0SDMWh8gd4ge59jty3/hchB7hEiGR/k49TWj2mYukB/BX59QO1RnSmhX6ETIlR"
    "TSma6fiKBLbp/aMr21P0wi3IaaWqZNm063JBX+ZuBtJIcvhMtZriHmuJz5P07VPTNd/fk2"
    "w5SZ5SyiK5LuIdyA+9ch0zLmz+V4bfesbvfUue5f0csl32Y2Axdyydi1JF0HYx0aCV/bwn"
    "AHOdQjZskF3/ufm+ENRCkE1Lf08mY8Ho1/PkTcoxAnc0shkOHQz5x3S78cjc5g9B22bBh9"
    "dfN1eHk1PIU24TmEC2K2JcyBywNVZQLL3qgiii6cwZveosLLGGWrx65R6VR82teofY1+ta"
    "tKXF+n1J7GNnsatUf5bfDZ9HjgVlLdA8q0xiaodPE1RRonnae2PklDxz3ouIf2Q6rjHtoQ"
    "96Dz1Oo8tTqOJCOO5IzNermhJGdhGtoC0SSQsrZERIltyX8gziNW8uIHAZlj+wgLPx+Gnx"
    "4DycmIfD0TWRkRJJVnqjmjhk5DC32vlob2LeWgrU8t0dllu6jGy7NXda8v56Kx+5Jbfe1y"
    "dzYdMQHnTRlPzXJ8J9yZm3bUVC6fVGflpC1igraiaJV/eyBuRuU31yLhXwj0elh9R2FObZ"
    "ZtUleHDxk3HoKOfp56Sh6K33O4YgupB0o4pcqIXTT3i5wQ83BVpRFN5fMRo4HCyf2rB1Lx"
    "vIPf+6t8joiTmSVciGPa2UlrrI09RWuzW6rNtj9Yf4uDbwH1NLg5qfPD8TqfYb4oXyEmt9"
    "22ho3uO90NB9JKRXddsy0L0dBqWmv0hy25kd7OBby9jsRfCObuhGCldhZ19vM0tPlyWEEt"
    "7ZxIUKcirggFSfJ/khrUhEECQxPNpZzG+BNypDoVoJdWxF4ykda1tlTX0jJoF91di+BTLq"
    "PnxUg2r+q9DlubKYam5f3OyvvdgVQL/G9T4N9WeFsr8S95k1/qXjEqVwewwvGGXz0eAgmL"
    "6QKpMvXLiX4QiD1S5BelD5JGrboQc2DFMC6QaZlB8S0/OzoOXioVXljnA26p7/SZYkqZiy"
    "YEuZZUMoJiYMEnJfxPCr3z6D2FJ/iqieijO9kNkYvwENuWJPeEip2dnR+1PrLN+ogykjEP"
    "/lqDGd8MA7ZFAWyLOLV1GqA8JphCssgtvcdU+eO64EVtJMmIrm7YfL58F8tDXrFB5aTMWV"
    "F0EOP9Qhjv52C8n8bYJC627FK2ohiJDguo34LkuVO2KBWtHiPp4LLfHRTZvQfZm/cgVdiT"
    "kwejbLH3NaIOwlx/rFFZhDW4z4CbMtu9jtHjjM0s+kUeAVD9R2HuWOvv5xk6bBhp3AVDS1"
    "yWDFKY+QXC31u0j+6J44JJALlzzlzXloz5CVEC0aNzJv8k31bhYCEeGTelVmepKpPXObE2"
    "QLRa/802QJCFXAFlNq0VQVO71kZ5kMhjXGTXkqNy8hinDgVLkX4gp3yz001o6z9s223I0d"
    "GklaNJW3LonxOoMCDmlqM68mO9uQf+YjWu2GmfzXRleYuk89ITurZF9Q/pJS777BOWMztD"
    "uX0+N++Sts0aQu/X0fDb8PIQPVjkkfBbej48P4bfg7V/S49Oz0fjQ4TNhUVv6cW3MXSyRx"
    "p4cF8/967OW/pWjhYduLSxwCU4iUrCGiPRcOqgpZYELfki1cshvhGdDliKfbttCldaW9gK"
    "MT658LMF+fjaKWi4O0IuoZi6O2j4QPhTcOkbo6knXLYgHEQggeaYzgRc7/bL3AVRRoKkjX"
    "UvnaxmA51WE2ovgYfL+cCW49usGrTJty5sb1YG3+X4evB9XUtzw6Y4rUBlQ98tBaoltrmv"
    "NlYe53577jHuyBGFj+8pnKfEvyAohAUSnoscziSOkK9FzP34XAF5R/kTlCDqQ8VaGyJ6mZ"
    "QF+5C8RS6HO4svVO63BubXh3zLD3md6qVBO57LWClP5nJ8F8FtRILyFgvMFRX9slNfxkg6"
    "gXLe8d1E9ksHc7wQ1SpZqmg1E6owgRNwbaSxz44YjZHoiNF8hlSIGN3CepcOoSZAWI4Dva"
    "/D8alf4DKkv6UncsmNLs+hhuVK9rulR1+/no2gLRQQ08UvL4d/G55cQwsn/0emLrQNf/s6"
    "uoQm8t2xOGlJKcylTliuduw6VSf2uQ1c6vCvEZZ008RpdDIpbQl5m5aQtWLj/vYpKnB9nb"
    "KDXN8SLhe6Y2iSqWWWPpjWqbpQq3kD59IStPJf1DqlLjba5g9KTgXYpDicrVdFFC9Sq7aH"
    "pzpnU0sYoWN1Whqr8zoeqDADkcIHFeUmyvZCBel9CvuhFng6h2IAfu4Y7lGB3kFdAMu24b"
    "cfowp3KidTOeJCUeb+X6yjzFvlWdLhI1GAw26RAIfd7ACH3bQ4Gr1WKdF/jaxzpdUayc/w"
    "lo27F+Oz0Xh4GBZ/kb9/+RI2BOVf2mWg1Uaut2TksrFwDUEIrcD3JK1Wy9uslgsy9bjlPh"
    "kguVbeiJOTbHA/vpMTlN2Mv9ycncnJJOUtlQCOT48uTw8R/HGmVBbAf3Z0asj9+X/BgYbN"
    "9ww+8lZsx2FKSCPwy5TNQaKmrsVM2emY13XcqnsA8ubR22Sbt8moAF8FtqeINa/bzGvfQG"
    "I43sS2psY9KeUAUtF2zw3UQIIPHzewk5XNO5kk7JziXX9N87n8YMqakOI0nYN4sL9fKBfQ"
    "fk4uoP200ADlaJkqhjbb57VGpN1e1d1ewZnLn7L3lMycYyrSelJwF+HBh6ZWfJCBbPBx79"
    "Pe592DvVXisVVLXr6xdG7tVyzD88aXtvboao+u9ujW4NG9crH/Nhlu3aC7/7xv1wBHRNEM"
    "n9dzgmQThGC/9+lQeMzAFf5lWfg+XAUEbiDZbhLHZk8CBRNNCLIUvt/6ptX3CluwIfVzvL"
    "/lJRotyOQIMu1P5LwhLagBrT64oFLaTp2k01A/C7UWChu966FLM2o5e6vl7JaVZnxVd2FR"
    "cFtbmPFKckn+gZJRPZX2EvXmKy/BOHBTlNBdJGouZzaC5CpQGXFoDvb3P/4VhbMhmO0nP9"
    "CUkkciXORRTlzQS/w8ZTBMqNWX2mauWYN5K8UJXihRZyss1VxpNTjRWgZzwyKgw60HiYUa"
    "55zUEetknYgRfpWsEcwTFb3GGeTacVxAxaSUeVJIWRBa6nJZkk47JKo7JOJYGvIYLqXqK2"
    "i7t+4bSdGkQ7Oz0e9uaHYo8lYKQ4tT6hi0tsWgpYwjr6Nc+snLFWrlMql5tkIJecEL33N0"
    "5FhGf0ITYjNIZO0yFBgzRJB22y9K583mKFZVR3XlsfI82s/VAoNgP0dtfO1qdS1SFhspVt"
    "f+W6Qb8sY0Ip0t62aWL8WbJOyERr6JgEthQBX6B8WiPmbMJphm7M9xugTYkzBtbBNoL7eT"
    "zW7IxxcXZ2tS0PEoaeC4gZJe7z762MtBVmDzTnvOJXDMAViYwpnwHORxyg2CvmrZWtRtNs"
    "VZReYybmSuKDqoWesbz1qtruvGc1Cxu+KV5zixVq61cp2pXF8RITJKVMW7+8+p2oYIRhZW"
    "uSecPUo6FNIFvtQpY/cWCQu+Y8QxNdkC+TdU+3KAJZCkQpYLBafEXKWB1zWtVshbrpBXu3"
    "Rew2XzNqvmDVRY8jgHbwjjs5IBZ2lKnbNZC3dauNM5mzsr1+kyxJsK0NW1cYvEjLa0Nu4R"
    "4dZ03lOoHGFPrraBozHPqRnZgOqozHZFZVZItvEqaTa22ykBH1UJhMPhHUS3mRAoRt2SgX"
    "8xks1X69ryoL9XNaL9+f82Mbs8"
)
