from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "users" ADD "last_login_at" TIMESTAMPTZ;"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "users" DROP COLUMN "last_login_at";"""


MODELS_STATE = (
    "eJztXG1z2jgQ/isaf0pn0kwKgeTSm5shDblyl0CnIe1NX8YjbGE0sSVXkkNyvf73k4QN+A"
    "ViUyAm9ZcQS7u2/Kyk3X0k67vhURu5/KDl4z69RcQ4Bd8NAj0k/0nV7QMD+v6sRhUIOHC1"
    "MPSxKZSYLoYDLhi0hKwZQpcjWWQjbjHsC0zVU4wWGCDIEANa6RTwER0TQIklZbmgDNkAcg"
    "DB9dvWy1qjCUaQj2SNRX1ZIyiAUpg58kfKAUZddKCea1NLPhgTZ3OPCAj+FiD5rg4SI8Tk"
    "gz5/lcWY2Oge8ejSvzWHGLl2DFBsqxvoclM8+Lrs5qZzfqElVfMHpkXdwCMzaf9BjCiZig"
    "cBtg+UjqpzEEEMCmTPwUwC1w1tEhVNWiwLBAvQtKn2rMBGQxi4yljG78OAWMpGQD9J/Tn6"
    "I2zanJhpdnt987rdN00jZVvVhIQtwiKLEtUvMBEKqO8/JvedAaJLDfWAN29b7/fqzRcaAs"
    "qFw3Slhsv4oRWhgBNVDfoMZf2bwvnNCLJsnCP5BNKyoatgHBXMQJ4NgAi+CKANQGp48N50"
    "EXHESF6+OjxcgvGH1nsNs5TSOFM5YieDuRtW1SZ1Cu8ZvmokZOPbJoGnMe7INkE5zlJYR7"
    "plxtr40Gl/bL8/BXcYjRH7Qq7aV2fq2kPeQF23zq863VMAbQ+TL6T3sasq5dSCWHIKymWj"
    "Zh4TNRdbqJk0kJ7uTDWbFRkGca31GOjxCWdrQ6F5lAPm5tFCmFVVHGafoSG+LwLxTKPM/X"
    "/VuWbt/dhiSIFhQpEG+VzWCOyhbKDjmgmw7VD1IPpnF6GXL2j3iPsQjqkl0Pc7V+3rfuvq"
    "nXqcx/k3V+PX6rdVTU2XPiRK95Jmmt4EfOz03wJ1CT71uu2ke57K9T8Zqk0wENQkdGxCe2"
    "74R6URajGru5ALM+Ar2T2puwbLh00ui+F3xNARJkstje59LG+3gp3jmpWVy2xlhu5kZLHK"
    "aI5rVlYus5Ujjzt4MItluSnFn0h4d8e+j6a3M2QpcyDB/0L19ILYZqiuk07YWXgVQTO8zS"
    "QP5iFLQ31BGcIO+Rs9pNLcBLAhd9ZL3G43IZ6VzgYZg+Mpw5XV0eQ/EgEkJilR6/pN67xt"
    "LJgy1gD0DUd5UqhyzhCP4puaJGPoylaA7s3lpaE79gBat2PIbDPWw1UNrdFEyVQ2XeXVvG"
    "QJJNDRGKmXUU0Psb+kDiYXELsBQ0YGgRyr319GIrtK0hxORHMSyT2CgNJANuCyy7zEZB/c"
    "Il+AIWVAjBgVwpU2eA0IukMMjKh8JVmOgA85H1NmS8QxstP08TpvvGbS+Aw7HSIK0Maqay"
    "VGR9jPykvfOKoJL3+r1er149phvXnSODo+bpwcnkhZ3d501fESn3DW+bPT7ccjJFWwnExG"
    "nuwBRTieqcKmKJ6no9BqjTwcmpRayPHounh4g/0i6E6knx+062cni6db2yTLtor08+LKUs"
    "Hr0zj9K70YwkfYz3L5c7VLHb43lcvn7RcbPcPDfk5F84GKEr9Wy7VlWq6tlhNLvpxYLcP8"
    "Kq6lop22xuopT1QQ1jmVCs6KxSsJixeExNt2+LtdhXZu7GZD+jRBfKxjZ4TxyY6/OJCf7z"
    "u5d4AKRCARB6B9h5jsFRJoAIEVcEE9xFQIxMEIEocDOhwCSpD8VQQbz9zr+XM3q3Z1lmBG"
    "X5YmVLs6N7urk7uBUwTfSL7aKPgoFVclUIuhf14JVEm4uWvE7rQPSzn0sGapK+daJrcT96"
    "AlnS2SvhQKwALpZvcoA2PsuurqhV4Rk82UrjnDaRdTzsXx6TeuOL7KeZdmjou7l3oe91Jf"
    "7F7qSfcy36wCGCfUtge1sam+Gwe6kStKaiyJkhoZUZKAIuCr0tUz7S2i7SNiK9SKgW68a3"
    "fPO90/T0Go/4X0upedbvtU5k6unLLl9cVFWDAcqpKKrS77RPS8gq3URwMcIbLqRwNzutVG"
    "4zJvNK7WJSoivexsb24i/WnSQ821ZySHEQe/ODVUNHbuxNCXspS8BgPkUsW7CgomwPAJS6"
    "z3UAbOCMxtAsnKEVe+T8XplmBy2V+SFj715soSsY4b2VtZ/rR7S7ngRhjzaJt34S/tU4rP"
    "kOaoNRq5+nNjSX9upPYKc1P6HHyX0anPKHURJAvm53m9BNgDqbgptKPpZLsT8lmvdxmL5s"
    "86iW3v3Ru1A23vlcZeCuFJWBLthp9Lq6gFF+3OW5BMTTVW6tQlS5wqsqIiK/Y3Q1ZMPnVa"
    "ka2YV67oirLRFSVZBVTp3DXifMHenvnq/ceSPpNPJPMf7sboWOqBUO+1XsmzKL3FKPxSDg"
    "IGiU29yels+1IAcyC1ABZcH8WWeaDbmm5bpYYlTw2rM6y2szUlYAwRYVLmFD23IaVZHdxQ"
    "BXdVcFeiQ43KZvUdsXKuZajq+41NLjtVHxXs8EcFLcSwNTKyTpKe1CzNNuBMZq0fA/9MeP"
    "+rnLVRe3V0fHRSbx5Nj9iYliw7WePxUzTUftKC29PmVCp6PB89rgZVAYRD8WeI7kaWe+QT"
    "BSIZUd1f173ugjh+ppIM57AlwH/AxTw1V+wA2kvAVWDEYrgI072r1j9JuN9c9s6SwYG6wV"
    "lWdLBNZ/bjfzxpO5k="
)
