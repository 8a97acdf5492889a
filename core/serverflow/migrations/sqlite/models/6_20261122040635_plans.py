from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "plans" (
    "id" CHAR(36) NOT NULL PRIMARY KEY,
    "kind" VARCHAR(16) NOT NULL,
    "tool" VARCHAR(100) NOT NULL,
    "summary" TEXT NOT NULL,
    "params_encrypted" TEXT NOT NULL,
    "preview" JSON NOT NULL,
    "status" VARCHAR(16) NOT NULL /* PENDING: pending\nCONFIRMED: confirmed\nAPPLIED: applied\nFAILED: failed\nREJECTED: rejected\nEXPIRED: expired */,
    "created_by" VARCHAR(300) NOT NULL,
    "token_id" CHAR(36),
    "created_at" TIMESTAMP NOT NULL,
    "expires_at" TIMESTAMP NOT NULL,
    "decided_by" VARCHAR(300),
    "decided_at" TIMESTAMP,
    "result" JSON,
    "organization_id" CHAR(36) NOT NULL REFERENCES "organizations" ("id") ON DELETE CASCADE
) /* A change an assistant proposed: shown as a dry run, applied once, or confirmed. */;
        ALTER TABLE "api_tokens" ADD "allow_apply" INT NOT NULL DEFAULT 0;"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "api_tokens" DROP COLUMN "allow_apply";
        DROP TABLE IF EXISTS "plans";"""


MODELS_STATE = (
    "eJztXW1z2za2/isYfWk6o2QT23K67s7OyLbSqmtLuX5pene9w4FEWOI1BbAAacfb7X+/OC"
    "QlSiRIkzQpUQy+xBGAA1HPAYHzhnP+6CyYSWzxru9YN+yB0M4J+qND8YLI/yT6uqiDHSfq"
    "gQYXT2x/MHYsw4VhfjOeCJfjqSt77rEtiGwyiZhyy3EtBt/S6aMJwZxw5BOdIDFnTxQxOp"
    "Vjhcs4MREWCKPrn/tvD3rHaI7FXPZMmSN7XIawHMxn8o8chzizyTv4XpNN5RdbdFbfV3jU"
    "+t0j8rfOiDsnXH7Rv/4tmy1qkq9ELD86D8a9RWxzA1DLhAn8dsN9dvy229vh+Sd/JDz+xJ"
    "gy21vQaLTz7M4ZXQ33PMt8BzTQNyOUcOwScw1m6tl2yJNlU/DEssHlHlk9qhk1mOQeezYw"
    "q/O3e49OgUfI/yb45+jv4aOtDTOM0fjGuB7cGEYnwVt4hBgvwqYpo7AuLOoCUH/8GcwbAe"
    "K3duALzn7uX705PP7eh4AJd8b9Th+uzp8+IXZxQOqDHqHs/03gfDbHXI3zcnwMafmgZTBe"
    "NkQgRy/AEr4lQDVA2lngr4ZN6Mydy48f3r/PwPjX/pUPsxzl48zkGxu8zKOw6yDoA7wjfO"
    "FNUOM7oN7Cx3gonwnL9yyB9ZK2yVh3fh0OvgyuTtCjRZ4Iv6OXg8tT+Lwgiwl87p9fDkcn"
    "CJsLi97R8ZcRdMqthfD4FpSLR8d5WHSczqHjOIP87c6A3azIa7BJVQ2DXt5wtvYqHB/lgP"
    "n4KBVm6NqE2eHk3vpaBOKIosnrv+xeU/k6xrbNngwpctjPSZRPmdxKMFUDHaOMoT2RpHXB"
    "vWrZ7nF5Oh5fwMwLIX63/YbhTQzoW9jE3nzw8ZeDLNdvHo5uYqhPOQFMDOwmQT+XPa61IG"
    "rUNyljoJsh6bvlf/ZxwcsfaI6pXFTBTpbBkJvh5eD6pn/5eYMr5/2bAfQc+K3PsdY38Zdj"
    "NQn6Mrz5GcFH9M/xaBAXilbjbv7ZgWfCnssMCm+AubbpLluXqG1w3cbCNTxRiu9x2go4Hz"
    "5yUxi/J4xeYpLJafLVseR0Jfi8Sam53GQuc/Io5bkyb/MmpeZyk7m8PHEnz0Yx20KC8BVm"
    "hv3h74tGhQhZxmeYWv/B8O0FsVWQVmnE2Vt4wSx2/6A02axDloT6E+PEmtF/kOeEcSEGbG"
    "ixHMem20+Io9boJeP4aWVXVC00+R+JAAlk+7P+9Vn/fNBJ2TIqAPpWkDyKazN3iBfxTWyS"
    "G+jKp0Cj24uLjr+wJ3j68IS5aWyscOhhByzWshqb7FocLOItmOKZjxH8GHj0lVne6Sit9c"
    "5Lhnonr4meIlChram/wk4QRjPLRZzId9tyGX9GJnFs9hwYyxkliHG0kEsIyVXxSLhQWOSr"
    "mFFhgP9XYgfxUfm3Nsxrw3xDNp2YNfIwjzXyMN0aeZiwysuXyPC4XQTgdZoWgvzhfV73R6"
    "b/I+EAmXB5KhayrUcU24NZYmHRujaITaAPer0cOMtRqTD7fTGUPUtONWULeQKaIon2L9fj"
    "UQraCcq4FmtNXfRfZFvC3VvpRYU0QLKhui4BfnPZ/y2O/dnF+DS+icMEpzE+SBmQu0s0i7"
    "AhQai5UJ4LDuMKS86QuimepnB4DHKQdfcOavm48s/bgw9HH49+ODw++kEO8Z9z1fIxgxtJ"
    "BwehjwahU/7sAAIJTG/I1xRQE4Rb3Mx3IOndDH67yV7HK2PYxXj003J4fHFvgj8n2Hbnho"
    "PdQgdojGyLwP9lj4/QEDWw0zLPNRSHaOoGoiIttZmUQv34/Z7sJSYDKauQdLJG8qoDsdxy"
    "jtRIkJJc+SDv4Pt2oUnWck66toIZmbECIcUWYwSWyv3ehghwjy59P7lVzYhki5u3szjYzv"
    "Z9lEfRPEpXM48SSuYDIY7BiVy3ghTZuBN029u1e3uyaT+RyZyxB0OQKSduOVkwaw4tFhYW"
    "C3XQUfrqb2/QkeeYJbm+Sam53hSuK6IWwqfXrnXtWm8MxNW51nfm+732PaIdtQc47Oy+4A"
    "c2QreqPzCnOxg5Np4SE0kNEodu2a5/Rcqdk9B9uyDUlVrsI4E2rrqY9ZqZlO5fHHi9g1m0"
    "37dZfl9goBExtOCer6bW8WqxuxLybS6Ga0Shj1Ad/LdNeINduiCwG0QaUi30NSSeMpQ8Xo"
    "lwGLXXUmCjo+ZlPMVKdH0lpJEM3FJUN3bERmknnmm5A+ry545KPYl6u5n6CYwzbDbLp52M"
    "KUEEZkXs3tcggrdZ+G/zdwIUDkLNt4zaz10/08Pb6VyCCzkg4IuQ/KKkolLVpLlCVgX5/X"
    "Way6k1S3ULKM9NhS8gXGivU1rqDwb568HB4eHHg/eHxz/0jj5+7P3wfuUUSHZleQdOhz+B"
    "g6C7bgtbegzSNRpgVSH4Q4Lt+WJawoK1c7awjbi1tuH9tQUnXQByT2eK0z7dkbwiaGHA8m"
    "GueOXDjHDlw2S0Mp6qtYBMiEOKFmJcS0ocF3N5shfBOKJoIca9XBj3MjDuJTE2iYstVXRP"
    "RqhVRNKMUCv42taEWjHPnbJiUUBrJC1c9ocHeXbvg/TN+0CRYuixcCKnDaIWwlx9JqeiCG"
    "twC4Crjena8tt0U1rD3f1n4R0qhTXtLLpelW5KW78Klyczq5BrhJgoJEMCvPBBPlT5fNSN"
    "vPThQLk6JdtQeJWby+WhSsZa0aw6/2oDdqBuhnFMK5z1K5wPluouZjrCy/FtxLfyvJMO5n"
    "hRSNGMKLSeWbmeaQnhpSSsSV/wG0QtXPW1mApD0FSm9kzf0jqZdnGUdnFkZWbMwj8zL6Nm"
    "QH4GUBYqQ3l3mRVBC3eY6i0BINfL7zceiDpdYTrOScoWAl69ICO1e9dTCDL5cvVH1Fu80A"
    "ZaYUHBpXM9GN2c+PrkHR3/4wSxhzs6uLoaX50gwjnjd/Rq8On2enB+IjXJe0hUfEfBdzm+"
    "lWThDfc7ejs6H1wMfx1cwThPPiMEHvPgRt/uWTmVWn2RN2Y5vhTrGhYhXTe2CyIEningTb"
    "/+uUbSBoS3fd1TvnCOp5By0jWsiEJnESqvSgUmNQOOU7m382I3+BW0bVj726iYE0A3YaZC"
    "h01f8zEyvfDLL3x9vzx9/e/nTeM898vvLWqJeSm2x0h1GvwmBxFqF7O+r9V8SLXXvgn3tf"
    "T9or2/X3S+ugzeUURErPV2s4IioivlOeMi4DJQQITeMA4FYW34Pd/D3SAcZDQIs9YHyJ2g"
    "pzl2u/JfuBzEniCS4Ul+nfqaUWUz58iP4K9PqGWpMyU0K3Qi5EoC6VTXT0TQJrdPZZnemh"
    "8mEW5DdS3Tuk2ne5IKfzvw1pLDF8LlLNcQc1zM/L9O1T4zXfX5NsOUmcUsoiuS9iFcg/vX"
    "IdMi5s/leG33LG/31Lnud+jlkk8zm4ELuWDsWpyuhbEOtYSv7WG4gxzqEbPggu/8z+3gFq"
    "IUAuo7enU7Gg1HP50g7lGIk7mjEMhw4mfOu6Of+sMLGH2PLRtGX99+HlxdD86hTXgO4YKY"
    "TQlz4PJAVZnA0jeqiKINZ/C2t6jwMkbR6rEbVDoVn/Y1al+jX+2qFNc3KbWnscmeRu1R/j"
    "b4bHo8cCup7gGlWmNjVLr4miKNk85TW52koeMedNxD8yHVcQ9NiHvQeWp1nlodR5ISR3LB"
    "Zp3MUJKLMA1tjmgSSFlbIKLEtuQ/EOexVvLiOwGZY7sICz8fhp8eA8nJiHw8E1kpESSlZ6"
    "o4o4ZOQwt9O0tD+y3loK1OLdHZZduoxsuzV3WvL+OisfuaW33NcnfWHTEB500RT81yfCvc"
    "mdt21JQun1Rl5aQ9YoK2omiVf38grkflNzci4V8J9GZYfUthTmyWTVJXB48pNx6Cjm6Wek"
    "oe899zuGYLqQdKOKXKiF0094ucEPNkVaURTeX3I0YDhZP7Vw+k4nkPn7urfI6Ik5klXIhj"
    "evcuqbHW9i1am91Tbbb5wfp7HHwLqCfBzUidH47X+QyzRfkSMbnNtjVsdd9pbziQVira65"
    "ptWIiGVtMaoz/syY30Zi7g/XUk/kwwdycEK7WzqLObpaHNl8NyammXRII6FeuKUJAk/0ep"
    "QU0YJDA00VzKaYw/I0eqUwF6SUXsNRNpXWtPdS0tg7bR3bUIXuUiet4ayfZVvd2wtZ5iaF"
    "reb6283x5ItcD/bQr8+wpvYyX+Czaz6Cds2ZAIVyH0b/Rnyv02jDTug6EF4gaD27x+ray3"
    "Fu2iB+K46J5x5M45c11bwv8jogQcKXMmf5If/+dgIZ4YNyXYlqpIV5UTa91gT3UDspAroI"
    "gjZkVQlydmqzyIpfTJ44mRozJS+iR8MZYiEj+jkpHTTmir93FppbaljpWE2LqbQ/+SQLI9"
    "Mbcc1ZG/1pt54C9W4/Kd9ulMV2Z6jMvxntBpHl8tqJbSXtNPWM7slKjkl9PULGmbHPXQ+X"
    "U4+DK4OkGPFnki/I5eDi5P4XOw9u9o//xyODpB2FxY9I6Ov4ygkz3RQJnZfRoancLjWzla"
    "tA1vazY8OIkKwrpGouHU9ruG2O98ker1EN+KVtvu1t7dJlnuNha2QoyPL/x0QX597eQ03P"
    "WRSyim7js0eCT8OYh/xmjqCZctCAcRSKA5pjMBkc5+xnd2DwY2QZLGutdOVrGBTqsJlWeD"
    "x4ti1WjD8U1WDUoai2opyyZsb1YE3+X4avDdraW5ZlOcVqDSoW+XAtUQ29xnGyuPc7898x"
    "h35Ijcx/cUzlPix8oJYYGE5yKHM4kjXF0Sc3nmQq4NjEz+DNl4u1C8xbaIiaBSeBfuMcnl"
    "cG/xhcr9VsP8+pBv+CGvbz3VaMdzGSvkyVyObyO4tUhQ3mKBuSK5fXoWiDWSVqC87UQQDu"
    "Z4IcoVdVDRaiaUYQIn4NpIYp8eaLtGou9UZjOkRPjtHpZ+cAg1AcJiHOh8HozO/VoPIf0d"
    "PZNLbnh1CeUcVrLfHe1//nwxhLZQQEzWgbga/DI4u4EWTv6PTF1oG/z2eXgFTeSrY/GmVI"
    "VY6oTFyqhsUrVin9tCERWXPZCi3q91Gn2vUltCvk1LyEbdLX/7FCW4vknZQq7vCZdzXbgy"
    "ydQyCx9Mm1RtKFu0hXNpCVrxN2qTUtfdaPILJacCbBIcTterIgpdJ1JfX2yQEKhjdXYVq7"
    "MbD1R4GU/hg4qu6aV7oYKbbrn9UAs8nUNePD93HveoQG8gRZ5l2/Dp+yjZu8rJVIw4V5S5"
    "/4t1lHmjPEs6fCQKcDjME+BwmB7gcJgUR6PHKiT6b5C1Lst4L5fo38sQ/XutqOtbmXF3PL"
    "oYjgYnYR5U+fnTp7AhyITaLAOtNnJ9S0YuGwvXEITQEnyP02q1vMlquSBTj1vuswGSa+mN"
    "OD7JFvfjezlB0c340+3FhZxMUt5RCeDovH8FFdPljzOlsgD+s/65Iffn/wUHGjbfMnjJG7"
    "EdW8AC2zYCv8wci3kRGUVNXYmZstUxr5u4lfcAZM2jt8kmb5NRLvoSbE8Qa143mde+gcRw"
    "vIltTY0HUsgBpKJtnxuohgQfPm5gJyuodicIW6d4V1/eay5fmKImpHWa1kF80OvlygXUy8"
    "gF1EsKDVCZhaliaNN9XhtE2u1V3u0VnLn8OX1PSc05piLdXmnN93Wt+Irrau4wI+03vrS1"
    "R1d7dLVHtwKP7rWL/adJcesG3d2XfbsGOCLyZvi8mRMkmyAE+61Ph8JjJijwHczol/UGbi"
    "DZHpSuEyiYaEKUZcKrm1bfK2zAhtTN8P4Wl2i0IJMhyBQ1or7KbNpkLagGrT64oFLYTh2n"
    "01C/CLUWCmu966GrFGg5e6/l7IZVKdipuzAvuI2tUXAtuSR/oGRUR6W9RL3ZykswDtwUBX"
    "QXiZrLmY0guQr5TqCBedDrffgrCmdDMNuPfqApJU9EuMijnLigl/h5ymCYUKsvlc1csQbz"
    "rRQneKVEna6wlHOlVeBEaxjMNYuADrceJRZqnDNSR2yStSJGeCdZI5gnSnqNU8i14ziHik"
    "kp86SQsiC00OWyOJ12SLyi7PkaloY8hgup+gra9q37WlI06dDsdPTbG5odirylwtDWKXUM"
    "WtNi0BLGkd0ol37ycoVauUxqnq5QQl7w3PccHTmW0R/RhNgMElm7DAXGDBGk3faL0nmzOV"
    "qrqqO68lh6Hu3naoBBsJuhNu66Wl2DlMVaitU1/xbplrwxtUhny7qZhZ1fCcJWaOTbCLgU"
    "hjxzrEfFoj5lzCaYpuzP63QxsCdh2tg60F5uJ9vdkE/H44sNKeh0GDdw3EJJrzcffOzlIC"
    "uweSc95zab4rRyZyl3A1cULdTx9N1breBVdfc2qB1d8vLtOrFW87Sal6rmXRMhUoolrXd3"
    "X1L6DBGMzK38TTh7knQopAu8elPGHiwSlh7HiGNqsgXy70p25QBLIEmFLBdKH4m5Shesal"
    "qtGjZcNSx3/bmCa89NVhJrqPXjcQ52ecZnBUOfkpQ6e7AW7rRwp7MHt1au0wVxtxUqqqu0"
    "5olebGiV1j7h1nTeUagcYU+mtoGjMS+pGemA6vjAZsUHlkj7sJOED/ttHoeXqgDC4fAWol"
    "tPMA6jbsEQtDWS7deN2vPws50a0f78f8BjaAc="
)
